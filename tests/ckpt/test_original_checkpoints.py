"""The original S-VRT trainer's own checkpoint files, made here with plain PyTorch as its trainer made them
(``best.pth``: step, epoch, best_psnr, state_dict, AdamW over model.parameters(), its SequentialLR schedule, a
GradScaler; ``last.pth``: step and state_dict only), resume on 1 and 2 ranks and initialise new runs."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler
from support.original_trainer import lrs_of, torch_schedule
from support.train_utils import config_for, make_dataset, output_of, run_train

from ds_deblur.ckpt.gather import loss_scaler_values
from ds_deblur.ckpt.single_file import (from_original, grad_scaler_state, load_single_file, loss_scaler_values_of,
                                        single_file_dict)
from ds_deblur.ckpt.weights import load_weights
from ds_deblur.data import build_dataloaders
from ds_deblur.losses import charbonnier_loss
from ds_deblur.models import build_model
from ds_deblur.run_log import read_train_log
from ds_deblur.zero.setup import build_scheduler

STEPS, TOTAL = 3, 6
SETS = [f"TRAIN.TOTAL_STEPS={TOTAL}", "TRAIN.WARMUP_STEPS=2", "TRAIN.VAL_EVERY_STEPS=100",
        "LOG.SAVE_EVERY_STEPS=100"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("original_data") / "synth")


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
    scheduler = build_scheduler(optimizer, cfg, TOTAL)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, growth_interval=2)
    batches = iter(build_dataloaders(cfg, num_workers=0)[0])
    for _ in range(STEPS):
        batch = next(batches)
        loss = charbonnier_loss(model(batch["blur"], batch["spike_vox"]), batch["sharp"])
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        scheduler.step()
    best, last = out / "best.pth", out / "last.pth"
    torch.save({"step": STEPS, "epoch": 0, "best_psnr": 25.5, "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict()}, best)
    torch.save({"step": STEPS, "state_dict": model.state_dict()}, last)
    return best, last


def scheduled_lrs(data, tmp_path) -> list[float]:
    """The original schedule's LR at each optimizer step of the whole run, from torch's own schedulers."""
    cfg = config_for(data, tmp_path, SETS)
    sched = cfg.TRAIN.SCHED
    return lrs_of(*torch_schedule(cfg.TRAIN.OPTIM.LR, sched.WARMUP_STEPS, TOTAL, sched.MIN_LR), TOTAL)


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
    log = read_train_log(out)
    assert [r["step"] for r in log] == [4, 5, 6]
    for record, want in zip(log, scheduled_lrs(data, tmp_path)[STEPS:]):
        assert math.isclose(record["lr"], want, rel_tol=1e-9), (record, want)


@pytest.mark.slow
def test_original_files_read_in_our_layout_and_initialise(original, data, tmp_path):
    best, last = original
    for path in (best, last):
        ckpt = load_single_file(path)
        assert ckpt["step"] == STEPS and ckpt["config"] is None and ckpt["meta"]["data"] is None
        model = build_model(config_for(data, tmp_path, SETS))
        assert "single file (step 3)" in load_weights(model, path)  # --init-weights accepts both
        assert all(torch.equal(model.state_dict()[k], v) for k, v in ckpt["state_dict"].items())
    best_ckpt, last_ckpt = load_single_file(best), load_single_file(last)
    assert best_ckpt["best_psnr"] == 25.5 and best_ckpt["meta"]["loss_scaler"]["cur_scale"] > 0
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
