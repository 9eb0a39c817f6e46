from pathlib import Path

import pytest
import torch

from ds_deblur.config import ConfigError, load_config
from ds_deblur.zero.setup import (CPU_FP16_OPT_IN, EngineConfigError, build_optimizer, build_scheduler,
                                  builtin_ds_config, cpu_engine_config, cpu_has_bf16, cpu_precision_of, engine_config,
                                  follow_resumed_precision, lr_factor, precision_of, read_ds_json, resolve_ds_config,
                                  total_steps, zero_stage_of)
from support.original_trainer import lrs_of, original_lrs

REPO = Path(__file__).resolve().parents[2]
CFG = load_config({"DATA": {"ROOT": "/d"}, "TRAIN": {"BATCH_SIZE": 2, "GRADIENT_ACCUMULATION_STEPS": 3,
                                                     "MAX_GRAD_NORM": 0.5, "OPTIM": {"LR": 1e-3},
                                                     "SCHED": {"MIN_LR": 1e-5, "WARMUP_STEPS": 4},
                                                     "TOTAL_STEPS": 20}})


@pytest.mark.parametrize("name", ["zero1_fp16", "zero2_fp16", "zero3_fp16", "zero2_bf16", "zero2_offload_fp16",
                                  "cpu_fp32", "cpu_autocast_bf16"])
def test_shipped_json_resolves_batch_from_yaml(name, monkeypatch):
    monkeypatch.setenv(CPU_FP16_OPT_IN, "1")
    ds = resolve_ds_config(read_ds_json(REPO / "ds_configs" / f"{name}.json"), CFG, world_size=4)
    assert ds["train_micro_batch_size_per_gpu"] == 2 and ds["gradient_accumulation_steps"] == 3
    assert ds["train_batch_size"] == 2 * 3 * 4 and ds["gradient_clipping"] == 0.5
    # the engine's weights: fp32 under autocast (cpu_precision_of tells it apart)
    assert precision_of(ds) == ("fp32" if name == "cpu_autocast_bf16" else name.split("_")[-1])


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


@pytest.mark.parametrize("warmup, total", [(4, 20), (0, 20), (20, 20), (30, 20), (1, 4)])
def test_schedule_is_the_originals_torch_schedulers(warmup, total):
    """With TRAIN.SCHED.MIN_LR unset (0, the original has no eta_min) our schedule gives exactly the LRs of the
    original's own construction (tests/support/original_trainer.py, written from its src/train.py); with a MIN_LR
    it is the closed form below, floored there."""
    unset = load_config(CFG, [f"TRAIN.SCHED.WARMUP_STEPS={warmup}", f"TRAIN.TOTAL_STEPS={total}",
                              "TRAIN.SCHED.MIN_LR=0"])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=unset.TRAIN.OPTIM.LR)
    assert lrs_of(opt, build_scheduler(opt, unset, total), total) == original_lrs(1e-3, warmup, total)
    cfg = load_config(CFG, [f"TRAIN.SCHED.WARMUP_STEPS={warmup}", f"TRAIN.TOTAL_STEPS={total}"])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.TRAIN.OPTIM.LR)
    ours = lrs_of(opt, build_scheduler(opt, cfg, total), total)
    closed = [1e-3 * lr_factor(s, cfg, total) for s in range(total)]
    assert max(abs(a - b) / b for a, b in zip(ours, closed)) < 1e-12
    peak = warmup if 0 < warmup < total else 0  # without a warm-up (or one as long as the run): cosine only
    assert ours[peak] == 1e-3 and all(a >= b for a, b in zip(ours[peak:], ours[peak + 1:]))
    assert cfg.TRAIN.SCHED.MIN_LR == 1e-5 and min(ours[peak:]) >= 1e-5 * (1 - 1e-12)  # the floor
    if peak:
        assert ours[0] == pytest.approx(1e-6) and all(a < b for a, b in zip(ours[:peak], ours[1:peak + 1]))


def test_min_lr_defaults_to_zero_as_in_the_original():
    cfg = load_config({"DATA": {"ROOT": "/d"}}, ["TRAIN.SCHED.WARMUP_STEPS=2", "TRAIN.TOTAL_STEPS=10"])
    assert cfg.TRAIN.SCHED.MIN_LR == 0.0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.TRAIN.OPTIM.LR)
    sched = build_scheduler(opt, cfg, 10)
    lrs_of(opt, sched, 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-20)  # the end of the run: eta_min 0


def test_total_steps_from_epochs_as_the_original_counted():
    cfg = load_config({"DATA": {"ROOT": "/d"}, "TRAIN": {"EPOCHS": 3, "GRADIENT_ACCUMULATION_STEPS": 4}})
    assert cfg.TRAIN.TOTAL_STEPS is None  # the file gives EPOCHS only: its length
    assert total_steps(cfg, batches_per_epoch=10) == 3 * (10 // 4)
    assert total_steps(load_config(cfg, ["TRAIN.TOTAL_STEPS=7"]), 10) == 7  # TOTAL_STEPS wins when given
    with pytest.raises(ConfigError, match="TRAIN.EPOCHS = 3 gives no optimizer step.*3 batches per rank"):
        total_steps(cfg, batches_per_epoch=3)


@pytest.mark.parametrize("cuda, shipped", [(True, "zero2_fp16.json"), (False, "cpu_fp32.json")])
def test_builtin_engine_config_is_the_shipped_json(cuda, shipped):
    ds, which = builtin_ds_config(cuda)
    assert ds == read_ds_json(REPO / "ds_configs" / shipped)  # one default, and the files document it
    assert ("fp16" if cuda else "fp32") in which and "ZeRO 2" in which and shipped in which


def test_engine_config_without_a_json_says_which(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("ds_deblur.zero.setup.cpu_has_bf16", lambda: False)
    said = []
    ds = engine_config(None, CFG, 2, say=said.append)
    assert said == ["[train] No --deepspeed_config: using the built-in engine config: ZeRO 2, fp32 "
                    "(no CUDA device; as ds_configs/cpu_fp32.json)"]
    assert precision_of(ds) == "fp32" and zero_stage_of(ds) == 2 and ds["train_batch_size"] == 2 * 3 * 2
    assert engine_config(REPO / "ds_configs/zero2_bf16.json", CFG, 1, say=said.append)["bf16"]["enabled"]
    assert len(said) == 1  # a given JSON is used silently


@pytest.mark.parametrize("preset, cpu_bf16, precision", [("base", True, "bf16"), ("vrt_gopro", True, "bf16"),
                                                          ("tiny", True, "autocast"), ("base", False, "fp32"),
                                                          ("tiny", False, "fp32")])
def test_builtin_cpu_config_follows_what_the_preset_measured_fastest(preset, cpu_bf16, precision):
    cfg = load_config(CFG.to_dict(), [f"MODEL.PRESET={preset}"])
    ds, which = builtin_ds_config(cuda=False, cfg=cfg, cpu_bf16=cpu_bf16)
    assert cpu_precision_of(ds) == precision and which.startswith("ZeRO 2, ")
    assert ("autocast" in which) == (precision == "autocast") and ("bf16 (" in which) == (precision == "bf16")
    if cpu_bf16:  # the way back in the same line
        assert preset in which and "--deepspeed_config ds_configs/cpu_fp32.json keeps fp32" in which
    svrt = load_config(cfg.to_dict(), ["MODEL.NETG={net_type: vrt}"])
    assert cpu_precision_of(builtin_ds_config(cuda=False, cfg=svrt, cpu_bf16=cpu_bf16)[0]) == "fp32"
    assert precision_of(builtin_ds_config(cuda=True, cfg=cfg, cpu_bf16=cpu_bf16)[0]) == "fp16"


@pytest.mark.parametrize("precision, shipped", [("fp32", "cpu_fp32.json"), ("autocast", "cpu_autocast_bf16.json")])
def test_cpu_configs_are_the_shipped_files(precision, shipped):
    ds = cpu_engine_config(precision)
    assert ds == read_ds_json(REPO / "ds_configs" / shipped) and cpu_precision_of(ds) == precision
    bf16 = cpu_engine_config("bf16")  # the CPU file with zero2_bf16.json's bf16 section
    assert bf16 == {**cpu_engine_config("fp32"), "bf16": read_ds_json(REPO / "ds_configs/zero2_bf16.json")["bf16"]}


def test_cpu_bf16_is_read_from_the_cpu_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512bw\n")
    assert not cpu_has_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512bw\n")
    assert cpu_has_bf16(info)
    assert not cpu_has_bf16(tmp_path / "missing")


@pytest.mark.parametrize("built, saved", [("bf16", "fp32"), ("fp32", "bf16"), ("autocast", "bf16"),
                                          ("fp32", "autocast"), ("bf16", "bf16")])
def test_builtin_config_resuming_keeps_the_runs_precision(built, saved):
    ds = cpu_engine_config(built)
    line = follow_resumed_precision(ds, cpu_engine_config(saved))
    assert ds == cpu_engine_config(saved)
    assert (line is None) == (built == saved)
    assert line is None or "the built-in engine config keeps it" in line
    fp16 = read_ds_json(REPO / "ds_configs/zero2_fp16.json")  # a GPU run's: not a CPU precision, nothing changes
    assert follow_resumed_precision(ds, fp16) is None and ds == cpu_engine_config(saved)


def test_optimizer_is_torch_adamw_fused_on_cuda(monkeypatch):
    model = torch.nn.Linear(3, 2)
    cpu = build_optimizer(model, CFG, {})
    assert type(cpu) is torch.optim.AdamW and not cpu.defaults["fused"]
    assert cpu.defaults["lr"] == 1e-3 and cpu.defaults["betas"] == (0.9, 0.99)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = build_optimizer(model, CFG, {"zero_optimization": {"stage": 2}})
    assert type(gpu) is torch.optim.AdamW and gpu.defaults["fused"] is True  # no JIT-built FusedAdam


def test_offload_needs_deepspeeds_cpu_adam_and_says_when_it_cannot_build(monkeypatch):
    import deepspeed.ops.adam

    class Unbuildable:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("Error building extension 'cpu_adam'")

    monkeypatch.setattr(deepspeed.ops.adam, "DeepSpeedCPUAdam", Unbuildable)
    offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    with pytest.raises(EngineConfigError) as err:
        build_optimizer(torch.nn.Linear(3, 2), CFG, offload)
    message = str(err.value)
    assert "offload_optimizer needs DeepSpeed's CPU Adam" in message and "cpu_adam" in message
    assert "remove offload_optimizer" in message


def test_adamw8bit_warns_and_uses_adamw():
    cfg = load_config(CFG, ["TRAIN.OPTIM.TYPE=adamw8bit"])
    with pytest.warns(UserWarning, match="adamw8bit: using AdamW"):
        assert type(build_optimizer(torch.nn.Linear(3, 2), cfg, {})) is torch.optim.AdamW
