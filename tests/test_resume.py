"""Exact resume: a run of 2N steps equals N steps + resume + N steps, bit for bit (per-step losses and weights)."""
from __future__ import annotations

import pytest
import torch

from ds_deblur.run_log import read_train_log
from train_utils import ds_json, make_dataset, output_of, run_train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("resume_data") / "synth")


def weights(run_dir) -> dict:
    return torch.load(run_dir / "ckpts/last.pth", weights_only=True)["state_dict"]


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_resume_mid_epoch_is_exact(data, tmp_path, stage):
    # 8 clips, 4 per rank and epoch: step 3 of 6 falls in the middle of epoch 0.
    config = ds_json(tmp_path, "ds_configs/cpu_fp32.json", stage)
    sets = ["TRAIN.TOTAL_STEPS=6", "TRAIN.VAL_EVERY_STEPS=2", "LOG.SAVE_EVERY_STEPS=2"]
    straight, pieces = tmp_path / "straight", tmp_path / "pieces"
    proc = run_train(data, straight, config, sets)
    assert proc.returncode == 0, output_of(proc)
    proc = run_train(data, pieces, config, sets, extra=["--stop-at-step", "3"])
    assert proc.returncode == 0, output_of(proc)
    assert [r["step"] for r in read_train_log(pieces)] == [1, 2, 3]
    proc = run_train(data, pieces, config, sets, extra=["--resume", "auto"])
    assert proc.returncode == 0, output_of(proc)
    assert "Resuming from step 3 (epoch 0)" in proc.stdout
    assert read_train_log(pieces) == read_train_log(straight)  # losses, LR, grad norms: bitwise
    a, b = weights(straight), weights(pieces)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
