"""Storage faults under a saved run (one process, tags step_000002 and step_000004): a damaged newest tag makes
``--resume auto`` fall back to the previous complete one and an explicit resume fail naming the problem; a full
disk during a save fails the run with a clear message. The last good checkpoint is never touched."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ds_deblur.ckpt.tags import read_latest, tag_problem
from ds_deblur.run_log import read_train_log
from reliability_settings import FULL
from support.files import digest
from support.train_utils import output_of, run_train

SETS = ["TRAIN.TOTAL_STEPS=6", "LOG.VAL_EVERY_STEPS=100", "LOG.SAVE_EVERY_STEPS=2", "LOG.KEEP_LAST=5"]


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("storage") / "run"
    proc = run_train(data, out, sets=SETS, ranks=0, extra=["--stop-at-step", "4"])
    assert proc.returncode == 0, output_of(proc)
    return out


def truncate(tag: Path) -> str:
    shard = tag / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return "truncated or overwritten"


def delete(tag: Path) -> str:
    next(tag.glob("*optim_states.pt")).unlink()
    return "is missing"


def corrupt_marker(tag: Path) -> str:
    (tag / "COMMIT.json").write_text('{"tag": "step_0000')
    return "corrupt"


@pytest.mark.slow
@pytest.mark.parametrize("fault", [truncate] + ([delete, corrupt_marker] if FULL else []))  # CI: unit tests cover those
def test_a_damaged_newest_tag_falls_back_and_is_named(saved, data, tmp_path, fault, record):
    out = tmp_path / "run"
    shutil.copytree(saved, out)
    good = digest(out / "ckpts/step_000002")
    why = fault(out / "ckpts/step_000004")
    proc = run_train(data, out, sets=SETS, ranks=0, extra=["--resume", str(out / "ckpts/step_000004")])
    assert proc.returncode == 2 and "step_000004 is incomplete or damaged" in proc.stderr and why in proc.stderr
    assert digest(out / "ckpts/step_000002") == good  # the failed attempt wrote nothing
    proc = run_train(data, out, sets=SETS, ranks=0, extra=["--resume", "auto"])
    assert proc.returncode == 0, output_of(proc)
    assert "skipping incomplete checkpoint" in proc.stderr and "step_000004" in proc.stderr and why in proc.stderr
    assert "Resuming from step 2" in proc.stdout
    assert [r["step"] for r in read_train_log(out)] == list(range(1, 7))
    assert digest(out / "ckpts/step_000002") == good
    record({"area": "storage", "case": fault.__name__.replace("_", " ") + " (newest tag)", "trials": 1, "faults": 1,
            "recovered": "fell back to step_000002", "data_lost": 0, "notes": "explicit resume: exit 2 naming it"})


@pytest.mark.slow
def test_latest_naming_a_missing_tag(saved, data, tmp_path, record):
    out = tmp_path / "run"
    shutil.copytree(saved, out)
    (out / "ckpts/latest").write_text("step_000009")
    proc = run_train(data, out, sets=SETS, ranks=0, extra=["--resume", str(out / "ckpts")])
    assert proc.returncode == 2 and "step_000009 is incomplete or damaged: does not exist" in proc.stderr
    proc = run_train(data, out, sets=SETS, ranks=0, extra=["--resume", "auto"])
    assert proc.returncode == 0 and "Resuming from step 4" in proc.stdout, output_of(proc)
    record({"area": "storage", "case": "latest names a missing tag", "trials": 1, "faults": 1,
            "recovered": "auto: newest complete tag (step_000004)", "data_lost": 0,
            "notes": "explicit resume of the dir: exit 2 naming it"})


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs mounted at tmp_path/disk with the size the test sets (root only: this suite runs as root in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def make(size_kb: int) -> Path:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}): needs root")
        return mount
    yield make
    subprocess.run(["umount", str(mount)], capture_output=True)


def used_kb(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) // 1024


@pytest.mark.slow
def test_a_full_disk_during_a_save_fails_clearly_and_keeps_the_last_good_checkpoint(saved, data, small_disk,
                                                                                       tmp_path, record):
    tag_kb = used_kb(saved / "ckpts/step_000004")
    disk = small_disk(used_kb(saved) + tag_kb // 2 + 2048)  # room for the logs, not for another tag
    out = disk / "run"
    shutil.copytree(saved, out)
    good = digest(out / "ckpts/step_000004")
    proc = run_train(data, out, sets=SETS, ranks=0, extra=["--resume", "auto"])
    assert proc.returncode != 0
    error = next((line for line in proc.stderr.splitlines() if line.startswith("[train] error: saving")), "")
    assert "saving checkpoint" in error and "MiB free on the checkpoint disk" in error, output_of(proc)
    assert "newest complete checkpoint is step_000004" in error
    ckpts = out / "ckpts"
    assert read_latest(ckpts) == "step_000004" and tag_problem(ckpts / "step_000004") is None
    assert digest(ckpts / "step_000004") == good
    assert torch.load(ckpts / "last.pth", weights_only=True)["step"] == 4
    # Space back (the run moved to a bigger disk): it resumes from the last good tag and finishes.
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    proc = run_train(data, moved, sets=SETS, ranks=0, extra=["--resume", "auto"])
    assert proc.returncode == 0 and "Resuming from step 4" in proc.stdout, output_of(proc)
    assert [r["step"] for r in read_train_log(moved)] == list(range(1, 7))
    record({"area": "storage", "case": "disk full during a save (tmpfs)", "trials": 1, "faults": 1,
            "recovered": "clear error; resumed from step_000004 after moving", "data_lost": 0,
            "notes": json.dumps({"tag_kb": tag_kb})})
