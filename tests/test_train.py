"""The real trainer under the real `deepspeed` launcher: 2 CPU ranks (gloo), tiny preset, synthetic data."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ds_deblur.run_log import read_train_log
from train_utils import REPO, config_for, ds_json, fixed_batch_loss, make_dataset, output_of, run_train

TB_TAGS = {"train/loss", "train/loss_charbonnier", "train/lr", "train/grad_norm", "train/loss_scale",
           "train/skipped_steps", "perf/samples_per_sec", "perf/step_time_ms", "perf/data_time_ms",
           "perf/memory_mb", "val/psnr_rgb", "val/psnr_y", "val/ssim_y", "val/best_psnr"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("train_data") / "synth")


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
    proc = run_train(data, out, ds_json(tmp_path, "ds_configs/cpu_fp32.json", stage),
                     sets=["TRAIN.TOTAL_STEPS=6", "TRAIN.VAL_EVERY_STEPS=3", "LOG.SAVE_EVERY_STEPS=3"])
    assert proc.returncode == 0, output_of(proc)
    check_run(out, 6, [3, 6])
    scalars, images = tensorboard_tags(out)
    assert TB_TAGS <= scalars, TB_TAGS - scalars
    assert "val/visual" in images
    assert (out / "visuals/step_000006.png").is_file() and (out / "config.yaml").is_file()
    single = torch.load(out / "ckpts/last.pth", weights_only=True)
    assert single["step"] == 6 and single["meta"]["zero_stage"] == stage and single["meta"]["world_size"] == 2
    cfg = config_for(data, out)
    assert fixed_batch_loss(cfg, single["state_dict"]) < fixed_batch_loss(cfg, None)  # it learned
    assert "Final validation PSNR" in proc.stdout and "vs blurry input" in proc.stdout
