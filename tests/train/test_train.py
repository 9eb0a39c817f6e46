"""The real trainer under the real `deepspeed` launcher: 2 CPU ranks (gloo), tiny preset, synthetic data."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ds_deblur.run_log import read_train_log
from support.train_utils import (ONE_VAL_FRAME, REPO, config_for, ds_json, fixed_batch_loss, output_of, run_train,
                                 shm_buffers)

TB_TAGS = {"train/loss", "train/loss_charbonnier", "train/lr", "train/grad_norm", "train/loss_scale",
           "train/skipped_steps", "perf/samples_per_sec", "perf/step_time_ms", "perf/data_time_ms",
           "perf/memory_mb", "val/psnr_rgb", "val/psnr_y", "val/ssim_y", "val/best_psnr"}


def dynamic_fp16(initial_scale_power: int) -> dict:
    """fp16 with dynamic loss scaling that halves on every overflow (no hysteresis) down to a scale of 1."""
    return {"enabled": True, "loss_scale": 0, "initial_scale_power": initial_scale_power, "hysteresis": 1,
            "min_loss_scale": 1, "loss_scale_window": 1000}


def tensorboard_tags(run_dir) -> tuple[set, set]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]), set(acc.Tags()["images"])


def val_records(run_dir) -> dict[int, list[dict]]:
    """rank -> the validation records that rank computed."""
    return {int(p.stem.removeprefix("val_rank")): [json.loads(line) for line in p.read_text().splitlines()]
            for p in (run_dir / "metrics").glob("val_rank*.jsonl")}


def check_run(run_dir, steps: int, val_steps: list[int]) -> list[dict]:
    log = read_train_log(run_dir)
    assert [r["step"] for r in log] == list(range(1, steps + 1))
    assert sorted(int(p.stem[-6:]) for p in (run_dir / "metrics").glob("val_step_*.json")) == val_steps
    records = val_records(run_dir)
    assert sorted(records) == [0, 1]
    assert [r["step"] for r in records[0]] == val_steps  # exactly once per validation step
    assert records[0] == records[1]  # both ranks computed the very same metrics and best
    return log


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_fp32_zero_stages_train_validate_and_log(data, tmp_path, stage):
    out = tmp_path / "run"
    shm_before = shm_buffers()
    proc = run_train(data, out, ds_json(tmp_path, "ds_configs/cpu_fp32.json", stage),
                     sets=["TRAIN.TOTAL_STEPS=6", "LOG.VAL_EVERY_STEPS=3", "LOG.SAVE_EVERY_STEPS=3"])
    assert proc.returncode == 0, output_of(proc)
    assert shm_buffers() <= shm_before  # no RAM left behind in /dev/shm
    check_run(out, 6, [3, 6])
    scalars, images = tensorboard_tags(out)
    assert TB_TAGS <= scalars, TB_TAGS - scalars
    assert "val/visual" in images
    assert (out / "visuals/step_000006.png").is_file() and (out / "config.yaml").is_file()
    assert json.loads((out / "versions.json").read_text())["deepspeed"].startswith("0.19")
    single = torch.load(out / "ckpts/last.pth", weights_only=True)
    assert single["step"] == 6 and single["meta"]["zero_stage"] == stage and single["meta"]["world_size"] == 2
    cfg = config_for(data, out)
    assert fixed_batch_loss(cfg, single["state_dict"]) < fixed_batch_loss(cfg, None)  # it learned
    assert "Final validation PSNR" in proc.stdout and "vs blurry input" in proc.stdout
    check_plain_torch_resume(cfg, out / "ckpts/last.pth")


def check_plain_torch_resume(cfg, path) -> None:
    """The original trainer's resume, in plain torch, from our last.pth: model, AdamW and scheduler load and a
    step runs from there."""
    from ds_deblur.models import build_model
    from ds_deblur.zero.setup import build_scheduler
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(cfg)
    model.load_state_dict(ckpt["state_dict"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.TRAIN.OPTIM.LR)
    scheduler = build_scheduler(optimizer, cfg, cfg.TRAIN.TOTAL_STEPS)  # before the loads, as docs/checkpoints.md says
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    state = optimizer.state[next(model.parameters())]
    assert float(state["step"]) == ckpt["step"] and state["exp_avg"].abs().sum() > 0
    assert optimizer.param_groups[0]["lr"] == scheduler.get_last_lr()[0] < cfg.TRAIN.OPTIM.LR  # mid-schedule
    before = {k: v.clone() for k, v in model.state_dict().items()}
    blur, spike = torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, cfg.DATA.K, 64, 64)
    model(blur, spike).mean().backward()
    optimizer.step()
    scheduler.step()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.dist
@pytest.mark.slow
def test_fp16_overflow_is_skipped_and_training_continues(data, tmp_path):
    out = tmp_path / "run"
    # A modest initial scale (2^8) so that only the injected overflow overflows.
    proc = run_train(data, out, ds_json(tmp_path, "ds_configs/zero2_fp16.json", fp16=dynamic_fp16(8)),
                     sets=ONE_VAL_FRAME, env={"DS_DEBLUR_ALLOW_CPU_FP16": "1", "DS_DEBLUR_INJECT_NONFINITE": "2"})
    assert proc.returncode == 0, output_of(proc)
    log = check_run(out, 4, [2, 4])
    assert [r["skipped"] for r in log] == [0, 1, 1, 1]
    assert [r["loss_scale"] for r in log] == [256.0, 128.0, 128.0, 128.0]  # halved by the overflow
    assert log[1]["grad_norm"] is None and log[2]["grad_norm"] is not None
    assert log[2]["lr"] == log[1]["lr"]  # the schedule does not advance on a skipped step
    weights = torch.load(out / "ckpts/last.pth", weights_only=True)["state_dict"]
    assert all(torch.isfinite(w).all() for w in weights.values())


@pytest.mark.dist
@pytest.mark.slow
def test_bf16_nonfinite_loss_skips_the_step_on_every_rank_with_accumulation(data, tmp_path):
    # 2 train sequences x 4 clips = 8 clips, 4 per rank per epoch: 3 micro-batches per step does not divide it.
    out = tmp_path / "run"
    proc = run_train(data, out, "ds_configs/zero2_bf16.json", sets=["TRAIN.GRADIENT_ACCUMULATION_STEPS=3"],
                     env={"DS_DEBLUR_INJECT_NONFINITE": "3"})
    assert proc.returncode == 0, output_of(proc)
    log = check_run(out, 4, [2, 4])
    assert [r["skipped"] for r in log] == [0, 0, 1, 1]
    # 4 batches per rank and epoch, 3 per step: steps straddle epochs (step 2 ends in epoch 1, step 3 in epoch 2)
    assert [r["epoch"] for r in log] == [0, 1, 2, 2]
    assert log[3]["lr"] == log[2]["lr"]
    # Resumed without --deepspeed_config, the built-in engine config (fp32 or autocast for the tiny preset, by the
    # CPU) keeps the run's bf16.
    again = run_train(data, out, None, sets=["TRAIN.GRADIENT_ACCUMULATION_STEPS=3", "TRAIN.TOTAL_STEPS=5"],
                      extra=["--resume", "auto"])
    assert again.returncode == 0, output_of(again)
    assert "trained in bf16: the built-in engine config keeps it" in again.stdout, output_of(again)
    assert [r["step"] for r in read_train_log(out)][-2:] == [4, 5]


@pytest.mark.dist
@pytest.mark.slow
def test_fp16_stuck_at_minimum_scale_saves_and_stops(data, tmp_path):
    out = tmp_path / "run"
    proc = run_train(data, out, ds_json(tmp_path, "ds_configs/zero2_fp16.json", fp16=dynamic_fp16(1)),
                     sets=["TRAIN.TOTAL_STEPS=8", "TRAIN.MIN_LOSS_SCALE_PATIENCE=2", "LOG.SAVE_EVERY_STEPS=100",
                           *ONE_VAL_FRAME],
                     env={"DS_DEBLUR_ALLOW_CPU_FP16": "1", "DS_DEBLUR_INJECT_NONFINITE": "1,2,3,4,5,6,7,8"})
    assert proc.returncode == 3, output_of(proc)
    assert "loss scale has sat at its minimum" in proc.stdout
    assert (out / "ckpts/step_000002/COMMIT.json").is_file()
    assert [r["step"] for r in read_train_log(out)] == [1, 2]


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "ds_deblur/train.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_script_help_runs_from_the_package_folder():
    # As a script, Python puts ds_deblur/ first on sys.path: nothing there may hide a module torch or DeepSpeed
    # imports (tests/test_cli.py checks the names against the standard library's).
    proc = run_script("--help")
    assert proc.returncode == 0, proc.stderr
    assert "--deepspeed_config" in proc.stdout and "--resume" in proc.stdout and "--stop-at-step" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.yaml", "--deepspeed_config", "ds_configs/cpu_fp32.json"], "Config file not found"),
    (["--config", "ds_configs/tiny_synth.yaml", "--deepspeed_config", "ds_configs/cpu_fp32.json",
      "--set", "TRAIN.LRR=1"], "did you mean TRAIN.OPTIM.LR?"),
    (["--config", "ds_configs/tiny_synth.yaml", "--deepspeed_config", "nope.json"], "DeepSpeed config not found"),
])
def test_bad_command_lines_exit_nonzero_with_a_message(args, message):
    proc = run_script(*args)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-3000:]


def test_without_deepspeed_config_the_builtin_engine_config_is_used(tmp_path):
    # The original trainer's command lines have no --deepspeed_config, and they run. The run says which engine
    # config it chose, then (here) stops at the missing data.
    proc = run_script("--config", "ds_configs/tiny_synth.yaml", "--set", f"DATA.ROOT={tmp_path / 'no_data'}")
    assert "[train] No --deepspeed_config: using the built-in engine config: ZeRO 2" in proc.stdout, proc.stdout
    assert proc.returncode == 2 and "no_data" in proc.stderr and "--deepspeed_config" not in proc.stderr
