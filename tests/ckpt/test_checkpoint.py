"""Checkpoint bookkeeping on hand-made tag directories: the commit marker, ``latest``, ``resolve``, retention and
the config-change policy (the engine round trips are in tests/train/test_train.py and tests/ckpt/test_resume.py)."""
import json
import pathlib
from pathlib import Path

import pytest

from ds_deblur.ckpt import tags
from ds_deblur.ckpt.compat import check_config_change
from ds_deblur.ckpt.retention import retain
from ds_deblur.errors import CheckpointError, CheckpointFormatError, CheckpointNotFoundError


def make_tag(ckpt_dir: Path, tag: str, step: int, files=None, commit=True) -> Path:
    files = files or {"mp_rank_00_model_states.pt": b"x" * 10, "rng_rank0.pt": b"y" * 3}
    tag_dir = ckpt_dir / tag
    tag_dir.mkdir(parents=True)
    for name, data in files.items():
        (tag_dir / name).write_bytes(data)
    if commit:
        tags.commit(tag_dir, tag, step, world_size=1)
    return tag_dir


def test_commit_lists_every_file_with_its_size(tmp_path):
    tag_dir = make_tag(tmp_path, "step_000001", 1)
    marker = tags.read_commit(tag_dir)
    assert marker["files"] == {"mp_rank_00_model_states.pt": 10, "rng_rank0.pt": 3}
    assert (marker["step"], marker["world_size"]) == (1, 1)
    assert tags.committed_step(tag_dir) == 1 and tags.saved_world_size(tag_dir) == 1


def test_tag_problem_detects_every_kind_of_damage(tmp_path):
    good = make_tag(tmp_path, "step_000001", 1)
    assert tags.tag_problem(good) is None
    assert "did not finish" in tags.tag_problem(make_tag(tmp_path, "step_000002", 2, commit=False))
    truncated = make_tag(tmp_path, "step_000003", 3)
    (truncated / "mp_rank_00_model_states.pt").write_bytes(b"x" * 4)
    assert "has 4 bytes, 10 expected" in tags.tag_problem(truncated)
    deleted = make_tag(tmp_path, "step_000004", 4)
    (deleted / "rng_rank0.pt").unlink()
    assert "rng_rank0.pt is missing" in tags.tag_problem(deleted)
    corrupt = make_tag(tmp_path, "step_000005", 5)
    (corrupt / tags.COMMIT).write_text("{garbage")
    assert "corrupt" in tags.tag_problem(corrupt)
    assert tags.tag_problem(tmp_path / "step_000009") == "does not exist"


def test_newest_complete_skips_damaged_tags_with_a_warning(tmp_path):
    ckpts = tmp_path / "ckpts"
    make_tag(ckpts, "step_000010", 10)
    make_tag(ckpts, "best", 10)
    make_tag(ckpts, "step_000020", 20, commit=False)
    with pytest.warns(UserWarning, match="step_000020"):
        assert tags.newest_complete(ckpts) == "step_000010"  # a step tag before best at the same step
    assert tags.newest_complete(tmp_path / "elsewhere") is None  # nothing saved: fresh start


def test_resolve_says_what_every_kind_of_path_is(tmp_path):
    ckpts = tmp_path / "ckpts"
    good = make_tag(ckpts, "step_000010", 10)
    bad = make_tag(ckpts, "step_000020", 20)
    (bad / "mp_rank_00_model_states.pt").write_bytes(b"")
    single = ckpts / "last.pth"
    single.write_bytes(b"x")
    tags.write_latest(ckpts, "step_000010")
    assert tags.resolve(ckpts) == tags.Location("tag", good)  # a checkpoint dir: its latest tag
    assert tags.resolve(good) == tags.Location("tag", good)
    assert tags.resolve(ckpts, "step_000010") == tags.Location("tag", good)
    assert tags.resolve(single) == tags.Location("file", single)
    assert tags.resolve(ckpts, complete=False) == tags.Location("dir", ckpts)  # for listing (inspect)
    assert tags.resolve(bad, complete=False) == tags.Location("tag", bad)
    with pytest.raises(CheckpointFormatError, match=r"step_000020 is incomplete or damaged: .*has 0 bytes"):
        tags.resolve(bad)
    for missing in (tmp_path / "nope", tmp_path / "nope.pth"):
        with pytest.raises(CheckpointNotFoundError, match=f"^Checkpoint not found: {missing}$"):
            tags.resolve(missing)
    with pytest.raises(CheckpointNotFoundError, match="Checkpoint not found: .*step_000099"):
        tags.resolve(ckpts, "step_000099")
    make_tag(tmp_path / "no_latest", "step_000007", 7)
    with pytest.raises(CheckpointFormatError, match="neither a checkpoint directory.*tags found: step_000007"):
        tags.resolve(tmp_path / "no_latest")
    (ckpts / "latest").write_text("step_000042")  # latest naming a tag that is gone
    with pytest.raises(CheckpointFormatError, match="step_000042 is incomplete or damaged: does not exist"):
        tags.resolve(ckpts)


def test_retention_keeps_newest_complete_best_and_tags_in_use(tmp_path):
    for step in (1, 2, 3, 4):
        make_tag(tmp_path, tags.step_tag(step), step)
    make_tag(tmp_path, "best", 1)
    make_tag(tmp_path, tags.step_tag(5), 5, commit=False)  # being written right now
    make_tag(tmp_path, tags.step_tag(0), 0, commit=False)  # a crashed save, older than the newest complete
    for step in (2, 4):  # universal copies (resumed on another world size) go with their tags
        (tmp_path / f"step_00000{step}.universal").mkdir()
    removed = retain(tmp_path, keep_last=2, in_use={"step_000001"})  # a background export still reads step 1
    assert sorted(removed) == ["step_000000", "step_000002"]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == ["best", "step_000001", "step_000003", "step_000004", "step_000004.universal", "step_000005"]
    assert tags.newest_complete(tmp_path) == "step_000004"  # a cache is never taken for a tag
    assert retain(tmp_path, keep_last=2) == ["step_000001"]  # once the export is done, it goes


def test_latest_survives_a_write_that_fails_half_way(tmp_path, monkeypatch):
    tags.write_latest(tmp_path, "step_000001")
    real_write_text = pathlib.Path.write_text

    def crash_half_way(path, text, *args, **kwargs):
        real_write_text(path, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        tags.write_latest(tmp_path, "step_000002")
    monkeypatch.undo()
    assert tags.read_latest(tmp_path) == "step_000001"  # a plain write would have left "step_0"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]  # no temporary left behind
    tags.write_latest(tmp_path, "step_000002")
    assert tags.read_latest(tmp_path) == "step_000002"


def test_config_change_rules():
    old = {"MODEL": {"PRESET": "tiny", "USE_SPIKE": True}, "DATA": {"K": 32, "CROP_SIZE": 64},
           "TRAIN": {"OPTIM": {"LR": 1e-3}, "BATCH_SIZE": 1}}
    new = json.loads(json.dumps(old))
    new["TRAIN"]["OPTIM"]["LR"], new["DATA"]["CROP_SIZE"] = 5e-4, 96
    said = []
    check_config_change(old, new, 2, 1, warn=said.append)
    text = "\n".join(said)
    assert "TRAIN.OPTIM.LR: 0.001 -> 0.0005" in text and "--reset-optimizer" in text
    assert "DATA.CROP_SIZE: 64 -> 96" in text and "world size changed 2 -> 1" in text
    new["DATA"]["K"], new["MODEL"]["PRESET"] = 16, "base"
    with pytest.raises(CheckpointError) as err:
        check_config_change(old, new, 1, 1, warn=said.append)
    assert "MODEL.PRESET: 'tiny' -> 'base'" in str(err.value) and "DATA.K: 32 -> 16" in str(err.value)


def test_a_changed_svrt_network_is_refused_on_resume():
    old = {"MODEL": {"NETG": {"fusion": {"operator": "gated"}}}}
    new = {"MODEL": {"NETG": {"fusion": {"operator": "pase_residual"}}}}
    check_config_change(old, json.loads(json.dumps(old)), 1, 1, warn=pytest.fail)
    with pytest.raises(CheckpointError, match="MODEL.NETG: .*gated.* -> .*pase_residual"):
        check_config_change(old, new, 1, 1)
