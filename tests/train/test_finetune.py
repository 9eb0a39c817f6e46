"""ds_configs/finetune_vrt_gopro.yaml: VRT's recipe, run by the real trainer on CPU from a stand-in of the official
weights (a small ``{'params': ...}`` file of the tiny preset's backbone, made here), with EMA on and a frozen layer,
on 2 ranks under ZeRO 3: the fixed parameters keep the released weights until FIX_ITER, the frozen ones for good,
a run cut before FIX_ITER and resumed equals an uninterrupted one bit for bit (EMA included), and the EMA weights
are what validation, convert --ema, inspect and inference use."""
from __future__ import annotations

import json

import pytest
import torch

from ds_deblur.ckpt.cli import convert_main as convert
from ds_deblur.ckpt.describe import describe, format_text
from ds_deblur.ckpt.single_file import single_file_dict
from ds_deblur.ckpt.weights import read_weights
from ds_deblur.config import load_config
from ds_deblur.models import build_model
from ds_deblur.run_log import read_train_log
from ds_deblur.zero.staged import matches
from support.train_utils import REPO, config_for, ds_json, output_of, run_train, validation_psnr

FINETUNE = REPO / "ds_configs" / "finetune_vrt_gopro.yaml"
FROZEN = "vrt.conv_first.weight"
# The recipe's own keys stay; the run is shortened and made small (tiny preset, 4 steps, FIX_ITER 2, EMA on), and
# without activation checkpointing, which only trades memory for recomputation (time on a CPU).
SETS = ["TRAIN.TOTAL_STEPS=4", "TRAIN.FIX_ITER=2", "TRAIN.EMA_DECAY=0.9", f"TRAIN.FREEZE=[{FROZEN}]",
        "LOG.VAL_EVERY_STEPS=2", "LOG.SAVE_EVERY_STEPS=1", "LOG.KEEP_LAST=4", "MODEL.VRT.USE_CHECKPOINT_ATTN=false",
        "MODEL.VRT.USE_CHECKPOINT_FFN=false"]


def test_the_config_is_vrts_recipe_on_the_official_backbone():
    cfg = load_config(FINETUNE)
    train = cfg.TRAIN
    assert (cfg.MODEL.PRESET, cfg.MODEL.USE_SPIKE) == ("vrt_gopro", True)
    assert (train.FIX_ITER, train.FIX_KEYS, train.FIX_LR_MUL) == (20000, ["spynet", "deform"], 0.125)
    assert (train.OPTIM.LR, train.TOTAL_STEPS, train.SCHED.MIN_LR, train.SCHED.WARMUP_STEPS) == (4e-4, 300000, 1e-7, 0)
    assert (cfg.DATA.CLIP_LEN, cfg.DATA.CROP_SIZE) == (6, 192)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("finetune")
    cfg = config_for(data, root)
    torch.manual_seed(7)
    release = root / "006_VRT_videodeblurring_GoPro_standin.pth"
    torch.save({"params": build_model(cfg).vrt.state_dict()}, release)
    config = ds_json(root, "ds_configs/cpu_fp32.json", 3)
    straight, pieces = root / "straight", root / "pieces"
    start = ["--config", str(FINETUNE), "--init-weights", str(release)]
    runs = [(straight, start), (pieces, [*start, "--stop-at-step", "1"]), (pieces, ["--config", str(FINETUNE),
                                                                                   "--resume", "auto"])]
    for out, extra in runs:
        proc = run_train(data, out, config, SETS, ranks=2, extra=extra)
        assert proc.returncode == 0, output_of(proc)
    return {"release": torch.load(release, weights_only=True)["params"], "straight": straight, "pieces": pieces,
            "stdout": proc.stdout}


@pytest.mark.dist
@pytest.mark.slow
def test_fixed_parameters_keep_the_released_weights_until_fix_iter_and_frozen_ones_for_good(finetuned):
    release, ckpts = finetuned["release"], finetuned["straight"] / "ckpts"
    fixed = [k for k in release if matches(k, ["spynet", "deform"])]
    others = [k for k in release if k not in fixed and k != FROZEN[len("vrt."):]]
    by_step = {step: single_file_dict(ckpts / f"step_{step:06d}")["state_dict"] for step in (1, 2, 3, 4)}
    for step, weights in by_step.items():
        assert torch.equal(weights[FROZEN], release[FROZEN[len("vrt."):]]), step
        moved = [k for k in fixed if not torch.equal(weights[f"vrt.{k}"], release[k])]
        assert (moved == []) == (step <= 2), (step, moved[:3])
    assert all(not torch.equal(by_step[1][f"vrt.{k}"], release[k]) for k in others[:5])  # the rest trains at once


@pytest.mark.dist
@pytest.mark.slow
def test_a_run_cut_before_fix_iter_resumes_exactly_ema_included(finetuned):
    straight, pieces = finetuned["straight"], finetuned["pieces"]
    assert "Resuming from step 1 (epoch 0)" in finetuned["stdout"]
    assert "✓ EMA weights loaded" in finetuned["stdout"]
    log = read_train_log(pieces)
    assert log == read_train_log(straight)
    assert log[0]["lr_fixed"] == pytest.approx(0.125 * log[0]["lr"])
    a = torch.load(straight / "ckpts/last.pth", weights_only=True)
    b = torch.load(pieces / "ckpts/last.pth", weights_only=True)
    for key in ("state_dict", "state_dict_ema"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert len(a["optimizer"]["param_groups"]) == 2 and a["meta"]["ema_decay"] == 0.9


@pytest.mark.dist
@pytest.mark.slow
def test_validation_scores_the_ema_weights_by_value(finetuned):
    """The PSNR validation logged at step 4 is what the EMA weights of step 4 score, recomputed here in one process,
    and not what the trained weights score: the EMA differs from the trained weights by enough to tell."""
    run = finetuned["straight"]
    logged = json.loads((run / "metrics/val_step_000004.json").read_text())["psnr_rgb"]
    last = torch.load(run / "ckpts/last.pth", weights_only=True)
    assert last["step"] == 4
    trained, ema = last["state_dict"], last["state_dict_ema"]
    assert any(not torch.equal(ema[k], v) for k, v in trained.items() if v.is_floating_point())
    cfg = load_config(run / "config.yaml")
    with_ema, with_trained = validation_psnr(cfg, ema), validation_psnr(cfg, trained)
    assert logged == pytest.approx(with_ema, abs=1e-4), (logged, with_ema, with_trained)
    assert abs(with_trained - with_ema) > 1e-2, (with_ema, with_trained)  # the check above can tell them apart


@pytest.mark.dist
@pytest.mark.slow
def test_validation_best_and_inference_use_the_ema_weights(finetuned, tmp_path):
    run = finetuned["straight"]
    val = json.loads((run / "metrics/val_step_000004.json").read_text())
    assert val["weights"] == "ema"
    best = torch.load(run / "ckpts/best.pth", weights_only=True)
    assert best["step"] == val["best_step"] and best["best_psnr"] == val["best_psnr"]
    weights = read_weights(run / "ckpts/last.pth", ema=None)  # what inference loads by default
    last = torch.load(run / "ckpts/last.pth", weights_only=True)
    assert "EMA" in weights.what and all(torch.equal(weights.state_dict[k], v) for k, v in
                                         last["state_dict_ema"].items())
    out = tmp_path / "ema.pth"
    assert convert([str(run / "ckpts"), "--tag", "step_000004", "--weights-only", "--ema", "--out", str(out)]) == 0
    exported = torch.load(out, weights_only=True)
    assert all(torch.equal(exported[k], v) for k, v in last["state_dict_ema"].items())
    info = describe(run / "ckpts" / "step_000004")
    assert info["ema_decay"] == 0.9 and info["contains"]["ema"] == ["ema_rank0.pt", "ema_rank1.pt"]
    assert info["frozen"] == 1 and "EMA weights: yes, decay 0.9" in format_text(info)
    info = describe(run / "ckpts" / "last.pth")
    assert info["contains"]["state_dict_ema"]["count"] == len(last["state_dict"])
    assert "fp32 EMA weights, decay 0.9" in format_text(info)
