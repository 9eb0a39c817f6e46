from pathlib import Path

import pytest
import torch

from ds_deblur.config import load_config
from ds_deblur.engine import (CPU_FP16_OPT_IN, EngineConfigError, build_scheduler, lr_factor, precision_of,
                              read_ds_json, resolve_ds_config)

REPO = Path(__file__).resolve().parents[1]
CFG = load_config({"DATA": {"ROOT": "/d"}, "TRAIN": {"BATCH_SIZE": 2, "GRADIENT_ACCUMULATION_STEPS": 3,
                                                     "CLIP_GRAD_NORM": 0.5, "LR": 1e-3, "MIN_LR": 1e-5,
                                                     "WARMUP_STEPS": 4, "TOTAL_STEPS": 20}})


@pytest.mark.parametrize("name", ["zero1_fp16", "zero2_fp16", "zero3_fp16", "zero2_bf16", "zero2_offload_fp16",
                                  "cpu_fp32"])
def test_shipped_json_resolves_batch_from_yaml(name, monkeypatch):
    monkeypatch.setenv(CPU_FP16_OPT_IN, "1")
    ds = resolve_ds_config(read_ds_json(REPO / "ds_configs" / f"{name}.json"), CFG, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 2 * 3 * 4 and ds["gradient_clipping"] == 0.5
    assert precision_of(ds) == name.split("_")[-1]


def test_contradiction_names_both_sides():
    with pytest.raises(EngineConfigError, match=r"gradient_accumulation_steps=8.*TRAIN.GRADIENT_ACCUMULATION_STEPS = 3"):
        resolve_ds_config({"gradient_accumulation_steps": 8}, CFG, 1)
    with pytest.raises(EngineConfigError, match="train_batch_size=7"):
        resolve_ds_config({"train_batch_size": 7}, CFG, 1)
    with pytest.raises(EngineConfigError, match="'optimizer' section"):
        resolve_ds_config({"optimizer": {"type": "Adam"}}, CFG, 1)
    # agreeing explicit values are fine
    assert resolve_ds_config({"train_batch_size": 12}, CFG, 2)["train_batch_size"] == 12


def test_cpu_fp16_needs_the_opt_in(monkeypatch):
    monkeypatch.delenv(CPU_FP16_OPT_IN, raising=False)
    if torch.cuda.is_available():
        pytest.skip("the refusal is about machines without a GPU")
    with pytest.raises(EngineConfigError, match="bf16"):
        resolve_ds_config({"fp16": {"enabled": True}}, CFG, 1)


def test_bad_json_files(tmp_path):
    with pytest.raises(EngineConfigError, match="DeepSpeed config not found"):
        read_ds_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(EngineConfigError, match="not valid JSON"):
        read_ds_json(bad)


def test_schedule_warms_up_linearly_from_the_first_step_then_cosine():
    lrs = [CFG.TRAIN.LR * lr_factor(s, CFG, 20) for s in range(21)]
    assert lrs[0] == pytest.approx(1e-3 / 4)           # the first step already trains
    assert lrs[3] == pytest.approx(1e-3)                # end of warm-up: the peak
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # then monotone decay
    assert lrs[20] == pytest.approx(1e-5)               # down to MIN_LR
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=CFG.TRAIN.LR)
    sched = build_scheduler(opt, CFG, 20)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(lrs[:5])
