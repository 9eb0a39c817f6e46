"""Checkpoint bookkeeping on hand-made tag directories (the engine round trips are in tests/test_train.py)."""
import json
from pathlib import Path

import pytest

from ds_deblur import checkpoint as ck


def make_tag(ckpt_dir: Path, tag: str, step: int, files=None, commit=True) -> Path:
    files = files or {"mp_rank_00_model_states.pt": b"x" * 10, "rng_rank0.pt": b"y" * 3}
    tag_dir = ckpt_dir / tag
    tag_dir.mkdir(parents=True)
    for name, data in files.items():
        (tag_dir / name).write_bytes(data)
    if commit:
        marker = {"tag": tag, "step": step, "world_size": 1, "files": {k: len(v) for k, v in files.items()}}
        (tag_dir / ck.COMMIT).write_text(json.dumps(marker))
    return tag_dir


def test_tag_problem_detects_every_kind_of_damage(tmp_path):
    good = make_tag(tmp_path, "step_000001", 1)
    assert ck.tag_problem(good) is None
    assert "did not finish" in ck.tag_problem(make_tag(tmp_path, "step_000002", 2, commit=False))
    truncated = make_tag(tmp_path, "step_000003", 3)
    (truncated / "mp_rank_00_model_states.pt").write_bytes(b"x" * 4)
    assert "has 4 bytes, 10 expected" in ck.tag_problem(truncated)
    deleted = make_tag(tmp_path, "step_000004", 4)
    (deleted / "rng_rank0.pt").unlink()
    assert "rng_rank0.pt is missing" in ck.tag_problem(deleted)
    corrupt = make_tag(tmp_path, "step_000005", 5)
    (corrupt / ck.COMMIT).write_text("{garbage")
    assert "corrupt" in ck.tag_problem(corrupt)


def test_auto_resume_skips_damaged_tags_with_a_warning(tmp_path):
    ckpts = tmp_path / "ckpts"
    make_tag(ckpts, "step_000010", 10)
    make_tag(ckpts, "best", 10)
    make_tag(ckpts, "step_000020", 20, commit=False)
    with pytest.warns(UserWarning, match="step_000020"):
        assert ck.resolve_resume("auto", tmp_path) == (ckpts, "step_000010")
    assert ck.resolve_resume("auto", tmp_path / "elsewhere") is None  # nothing saved: fresh start


def test_explicit_resume_forms_and_errors(tmp_path):
    ckpts = tmp_path / "ckpts"
    make_tag(ckpts, "step_000010", 10)
    bad = make_tag(ckpts, "step_000020", 20)
    (bad / "mp_rank_00_model_states.pt").write_bytes(b"")
    ck.write_latest(ckpts, "step_000010")
    assert ck.resolve_resume(str(ckpts), tmp_path) == (ckpts, "step_000010")
    assert ck.resolve_resume(str(ckpts / "step_000010"), tmp_path) == (ckpts, "step_000010")
    with pytest.raises(ck.CheckpointError, match=r"step_000020 is incomplete or damaged: .*has 0 bytes"):
        ck.resolve_resume(str(bad), tmp_path)
    with pytest.raises(ck.CheckpointError, match="Checkpoint not found: .*nope"):
        ck.resolve_resume(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(ck.CheckpointError, match="neither a checkpoint directory"):
        ck.resolve_resume(str(tmp_path), tmp_path)


def test_retention_keeps_newest_complete_and_best(tmp_path):
    for step in (1, 2, 3, 4):
        make_tag(tmp_path, ck.step_tag(step), step)
    make_tag(tmp_path, "best", 1)
    make_tag(tmp_path, ck.step_tag(5), 5, commit=False)  # being written right now
    make_tag(tmp_path, ck.step_tag(0), 0, commit=False)  # a crashed save, older than the newest complete
    for step in (2, 4):  # universal copies (resumed on another world size) go with their tags
        (tmp_path / f"step_00000{step}.universal").mkdir()
    removed = ck.retain(tmp_path, keep_last=2)
    assert sorted(removed) == ["step_000000", "step_000001", "step_000002"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["best", "step_000003", "step_000004", "step_000004.universal", "step_000005"]
    assert ck.newest_complete(tmp_path) == "step_000004"  # a cache is never taken for a tag


def test_latest_is_replaced_atomically(tmp_path):
    ck.write_latest(tmp_path, "step_000001")
    ck.write_latest(tmp_path, "step_000002")
    assert (tmp_path / "latest").read_text() == "step_000002"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]  # no temporary left behind


def test_config_change_rules():
    old = {"MODEL": {"PRESET": "tiny", "USE_SPIKE": True}, "DATA": {"K": 32, "CROP_SIZE": 64},
           "TRAIN": {"LR": 1e-3, "BATCH_SIZE": 1}}
    new = json.loads(json.dumps(old))
    new["TRAIN"]["LR"], new["DATA"]["CROP_SIZE"] = 5e-4, 96
    said = []
    ck.check_config_change(old, new, 2, 1, warn=said.append)
    text = "\n".join(said)
    assert "TRAIN.LR: 0.001 -> 0.0005" in text and "--reset-optimizer" in text
    assert "DATA.CROP_SIZE: 64 -> 96" in text and "world size changed 2 -> 1" in text
    new["DATA"]["K"], new["MODEL"]["PRESET"] = 16, "base"
    with pytest.raises(ck.CheckpointError) as err:
        ck.check_config_change(old, new, 1, 1, warn=said.append)
    assert "MODEL.PRESET: 'tiny' -> 'base'" in str(err.value) and "DATA.K: 32 -> 16" in str(err.value)
