"""The original S-VRT trainer's own checkpoint files, made here with plain PyTorch as its trainer made them
(``best.pth``: step, epoch, best_psnr, state_dict, AdamW over model.parameters(), its SequentialLR schedule, a
GradScaler; ``last.pth``: step and state_dict only), resume on 1 and 2 ranks (fp32, and fp16 for the GradScaler's
state) and initialise new runs. The schedule and the scaler are the original's own (torch's classes built as
src/train.py builds them, tests/support/original_trainer.py), so what is compared is independent of our code."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler

from ds_deblur.ckpt.gather import loss_scaler_values
from ds_deblur.ckpt.single_file import (from_original, grad_scaler_state, load_single_file, loss_scaler_values_of,
                                        single_file_dict)
from ds_deblur.ckpt.weights import load_weights
from ds_deblur.data import build_dataloaders
from ds_deblur.losses import charbonnier_loss
from ds_deblur.models import build_model
from ds_deblur.run_log import read_train_log
from support.original_trainer import original_lrs, original_scheduler
from support.train_utils import config_for, ds_json, output_of, run_train

STEPS, TOTAL = 3, 6
# MIN_LR 0, the default (tiny_synth.yaml sets 1e-5): the original has no eta_min, so its schedule can be compared.
SETS = [f"TRAIN.TOTAL_STEPS={TOTAL}", "TRAIN.SCHED.WARMUP_STEPS=2", "TRAIN.SCHED.MIN_LR=0", "LOG.VAL_EVERY_STEPS=100",
        "LOG.SAVE_EVERY_STEPS=100"]
# The original's GradScaler when it saved best.pth: a scale and a growth tracker no default gives. With a window of
# GROWTH_INTERVAL clean steps, a GradScaler at TRACKER grows the scale on the second step after the save. (The
# original keeps GradScaler's default interval, 2000; DeepSpeed grows on the same step when its JSON's
# loss_scale_window equals the interval, as the fp16 test's does.)
SCALE, GROWTH_INTERVAL, TRACKER = 2.0 ** 12, 39, 37


@pytest.fixture(scope="module")
def original(data, tmp_path_factory):
    """(best.pth, last.pth) after STEPS steps of the original trainer's loop (AMP's GradScaler, AdamW, schedule)."""
    out = tmp_path_factory.mktemp("original_run")
    cfg = config_for(data, out, SETS)
    torch.manual_seed(cfg.SEED)
    model = build_model(cfg)
    optim = cfg.TRAIN.OPTIM
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.LR, betas=tuple(optim.BETAS),
                                  weight_decay=optim.WEIGHT_DECAY)
    scheduler = original_scheduler(optimizer, cfg.to_dict(), TOTAL)
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE, growth_interval=GROWTH_INTERVAL)
    scaler.load_state_dict({**scaler.state_dict(), "_growth_tracker": TRACKER - STEPS})  # a long run's tracker
    batches = iter(build_dataloaders(cfg, num_workers=0)[0])
    for _ in range(STEPS):
        batch = next(batches)
        loss = charbonnier_loss(model(batch["blur"], batch["spike_vox"]), batch["sharp"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        scheduler.step()
    assert (scaler.get_scale(), scaler.state_dict()["_growth_tracker"]) == (SCALE, TRACKER)  # no overflow
    best, last = out / "best.pth", out / "last.pth"
    torch.save({"step": STEPS, "epoch": 0, "best_psnr": 25.5, "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict()}, best)
    torch.save({"step": STEPS, "state_dict": model.state_dict()}, last)
    return best, last


def scheduled_lrs(data, tmp_path) -> list[float]:
    """The original schedule's LR at each optimizer step of the whole run (built as the original builds it; our
    TRAIN.SCHED.MIN_LR is unset, so ours must be the same)."""
    cfg = config_for(data, tmp_path, SETS)
    assert cfg.TRAIN.SCHED.MIN_LR == 0.0
    return original_lrs(cfg.TRAIN.OPTIM.LR, cfg.TRAIN.SCHED.WARMUP_STEPS, TOTAL)


def grad_scaler_scales(state: dict, steps: int) -> list[float]:
    """The scale after each of ``steps`` clean steps of torch's GradScaler resumed from ``state`` (what the original
    trainer would have used next), on a parameter of its own."""
    param = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([param], lr=0.0)
    scaler = torch.amp.GradScaler("cpu")
    scaler.load_state_dict(state)
    scales = []
    for _ in range(steps):
        scaler.scale(param.sum()).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        scales.append(scaler.get_scale())
    return scales


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("ranks", [1, 2])
def test_original_best_pth_resumes_with_its_moments_schedule_and_step(data, original, tmp_path, ranks):
    best, out = original[0], tmp_path / "run"
    # Loaded and saved at once: the tag holds exactly the file's weights, Adam moments and schedule.
    proc = run_train(data, out, sets=SETS, ranks=ranks, extra=["--resume", str(best), "--stop-at-step", str(STEPS)])
    assert proc.returncode == 0, output_of(proc)
    assert "A checkpoint of the original S-VRT trainer" in proc.stdout
    assert f"Resuming from step {STEPS} (epoch 0), best PSNR so far 25.5000" in proc.stdout
    assert "✓ Optimizer state loaded" in proc.stdout and "✓ LR scheduler state loaded" in proc.stdout
    file, tag = torch.load(best, weights_only=True), single_file_dict(out / f"ckpts/step_{STEPS:06d}")
    assert tag["step"] == STEPS and tag["meta"]["world_size"] == ranks
    assert all(torch.equal(tag["state_dict"][k], v) for k, v in file["state_dict"].items())
    for index, moments in file["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(tag["optimizer"]["state"][index][key], moments[key]), (index, key)
    assert tag["scheduler"]["last_epoch"] == STEPS and tag["scheduler"]["_last_lr"] == file["scheduler"]["_last_lr"]
    # Training goes on with the original schedule's LRs.
    proc = run_train(data, out, sets=SETS, ranks=ranks, extra=["--resume", "auto"])
    assert proc.returncode == 0, output_of(proc)
    assert_original_schedule_continues(data, out, tmp_path)


def assert_original_schedule_continues(data, out, tmp_path) -> None:
    """The resumed run logged steps 4-6 at the original schedule's LRs."""
    log = read_train_log(out)
    assert [r["step"] for r in log] == [4, 5, 6]
    for record, want in zip(log, scheduled_lrs(data, tmp_path)[STEPS:]):
        assert math.isclose(record["lr"], want, rel_tol=1e-9), (record, want)


@pytest.mark.dist
@pytest.mark.slow
def test_original_last_pth_restores_weights_and_step_with_a_fresh_optimizer(data, original, tmp_path):
    # Where the original trainer left it, resumed as its config asks (RESUME_FROM_CHECKPOINT, CHECKPOINT_PATH null).
    out = tmp_path / "run"
    (out / "ckpts").mkdir(parents=True)
    shutil.copy(original[1], out / "ckpts" / "last.pth")
    proc = run_train(data, out, sets=[*SETS, "TRAIN.RESUME_FROM_CHECKPOINT=true"], ranks=2)
    assert proc.returncode == 0, output_of(proc)
    assert "TRAIN.RESUME_FROM_CHECKPOINT: resuming from the newest checkpoint" in proc.stdout
    assert f"Loading checkpoint {out / 'ckpts' / 'last.pth'}" in proc.stdout
    assert f"Resuming from step {STEPS} (epoch 0)" in proc.stdout
    assert "Optimizer starts fresh: the checkpoint holds no optimizer state" in proc.stdout
    assert f"LR schedule positioned at step {STEPS}" in proc.stdout
    assert_original_schedule_continues(data, out, tmp_path)


@pytest.mark.dist
@pytest.mark.slow
def test_original_grad_scaler_state_becomes_deepspeeds_loss_scale(data, original, tmp_path):
    """best.pth resumed under fp16 (the CPU opt-in): DeepSpeed's loss scale starts at the GradScaler's saved scale
    (not the JSON's initial 2**8) and grows on the step GradScaler itself would grow it, which it only does if the
    growth tracker was carried; the wanted scales come from torch's GradScaler resumed from the same state."""
    fp16 = {"enabled": True, "loss_scale": 0, "initial_scale_power": 8, "hysteresis": 1, "min_loss_scale": 1,
            "loss_scale_window": GROWTH_INTERVAL}
    config, out = ds_json(tmp_path, "ds_configs/zero2_fp16.json", fp16=fp16), tmp_path / "run"
    proc = run_train(data, out, config, SETS, ranks=1, env={"DS_DEBLUR_ALLOW_CPU_FP16": "1"},
                     extra=["--resume", str(original[0]), "--stop-at-step", str(STEPS + 2)])
    assert proc.returncode == 0, output_of(proc)
    assert "✓ Loss scaler state loaded" in proc.stdout
    log = read_train_log(out)
    assert [(r["step"], r["skipped"]) for r in log] == [(STEPS + 1, 0), (STEPS + 2, 0)]  # two clean steps
    want = grad_scaler_scales(torch.load(original[0], weights_only=True)["scaler"], 2)
    assert want == [SCALE, 2 * SCALE]  # the saved scale, then a growth on the second step (tracker 37 of 39)
    assert [r["loss_scale"] for r in log] == want, log


@pytest.mark.slow
def test_original_files_read_in_our_layout_and_initialise(original, data, tmp_path):
    best, last = original
    for path in (best, last):
        ckpt = load_single_file(path)
        assert ckpt["step"] == STEPS and ckpt["config"] is None and ckpt["meta"]["data"] is None
        model = build_model(config_for(data, tmp_path, SETS))
        assert "single file (step 3)" in load_weights(model, path)[0]  # --init-weights accepts both
        assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["state_dict"].items())
    best_ckpt, last_ckpt = load_single_file(best), load_single_file(last)
    assert best_ckpt["best_psnr"] == 25.5 and best_ckpt["meta"]["loss_scaler"]["cur_scale"] == SCALE
    assert best_ckpt["scaler"] == torch.load(best, weights_only=True)["scaler"]
    assert last_ckpt["optimizer"] is None and last_ckpt["best_psnr"] == float("-inf")


@pytest.mark.parametrize("tracker", range(4))
def test_a_grad_scaler_becomes_deepspeed_loss_scaler_values_that_grow_on_the_same_step(tracker):
    window = 4
    grad_scaler = {"scale": 2.0 ** 12, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": window,
                   "_growth_tracker": tracker}
    values = from_original({"step": 1, "state_dict": {}, "scaler": grad_scaler})["meta"]["loss_scaler"]
    assert values == loss_scaler_values_of(grad_scaler) and values["cur_scale"] == 2.0 ** 12
    ds = DynamicLossScaler(init_scale=1.0, scale_window=window, min_scale=1, delayed_shift=1,
                           consecutive_hysteresis=False)
    for key, value in values.items():
        setattr(ds, key, value)
    assert grad_scaler_state(loss_scaler_values(ds))["_growth_tracker"] == tracker  # the inverse of our export
    scale, steps = ds.cur_scale, 0
    while ds.cur_scale == scale:
        ds.update_scale(False)
        steps += 1
    assert steps == window - tracker  # GradScaler grows after growth_interval - tracker more good steps
