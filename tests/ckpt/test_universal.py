"""A sharded tag loaded on another world size through DeepSpeed's universal checkpoint (ds_deblur.universal).

The toy tags of tests/support/tag_factory.py, saved on 2 ranks, load on 1, and saved on 1, load on 2: weights, Adam moments
and step, buffers, LR and (fp16) loss scaler must be exactly what the saving run held. The trainer-level runs are
in tests/ckpt/test_resume.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from ds_deblur import distributed
from ds_deblur.ckpt import universal
from ds_deblur.ckpt.tag_io import load_tag
from ds_deblur.ckpt.tags import committed_step, read_commit
from ds_deblur.errors import CheckpointError, UniversalError
from ds_deblur.zero.setup import initialize
from support.files import copy_tag
from support.tag_factory import TAGS, TOTAL_STEPS, Toy, _reference, make_config, reference
from support.train_utils import free_port


def load_elsewhere(rank: int, world: int, port: int, tag_dir: str, out: str, enable: bool) -> None:
    """Spawned rank: an engine with another world size (fresh weights, zeroed buffers) loads the tag, with
    DeepSpeed's universal loading enabled (or, ``enable`` false, not: then the error is what we keep)."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), DS_DEBLUR_ALLOW_CPU_FP16="1")
    torch.set_num_threads(1)
    distributed.init()
    tag_dir = Path(tag_dir)
    _, stage, precision = TAGS[tag_dir.name]
    cfg, ds = make_config(world, stage, precision)
    if enable:
        ds["checkpoint"] = {"load_universal": True}
        universal.prepare(tag_dir)
    torch.manual_seed(123)
    model = Toy()
    for buffer in model.buffers():
        buffer.zero_()
    engine = initialize(model, cfg, ds, TOTAL_STEPS)
    try:
        state = load_tag(engine, tag_dir)
    except CheckpointError as exc:
        torch.save({"error": str(exc)}, out)
        distributed.end_rank()
    loaded = _reference(engine)
    loaded["adam_step"] = sorted({float(s["step"]) for s in engine.optimizer.optimizer.state.values()})
    if rank == 0:
        torch.save({"loaded": loaded, "state": state}, out)
    distributed.end_rank()


def load_on(world: int, tag_dir: Path, out: Path, enable: bool = True) -> dict:
    mp.spawn(load_elsewhere, args=(world, free_port(), str(tag_dir), str(out), enable), nprocs=world, join=True)
    return torch.load(out, weights_only=False)


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("name", ["z1_w2", "z2_w2", "z3_w2", "z2_w2_fp16", "z2_w1", "z3_w1"])
def test_another_world_size_loads_the_exact_state(tags, tmp_path, name):
    saved_world = TAGS[name][0]
    tag_dir = copy_tag(tags, name, tmp_path)
    result = load_on(3 - saved_world, tag_dir, tmp_path / "loaded.pt")
    want, got = reference(tags, name)["at_save"], result["loaded"]
    for key in ("weights", "exp_avg", "exp_avg_sq", "buffers"):
        assert want[key].keys() == got[key].keys()
        for param, value in want[key].items():
            assert torch.equal(got[key][param], value), f"{key} {param}"
    assert got["adam_step"] == [float(want["adam_steps"])]
    assert got["lr"] == want["lr"] and got["skipped_steps"] == want["skipped_steps"]
    assert got["loss_scaler"] == want["loss_scaler"]
    assert result["state"]["step"] == committed_step(tag_dir)
    assert result["state"]["rng_restored"] is False  # RNG streams are per rank: not carried to another world
    assert universal.is_current(tag_dir)


@pytest.mark.dist
@pytest.mark.slow
def test_cache_is_reused_and_rebuilt_when_the_tag_changes(tags, tmp_path):
    tag_dir = copy_tag(tags, "z2_w2", tmp_path)
    load_on(1, tag_dir, tmp_path / "first.pt")
    cache = universal.cache_of(tag_dir)
    stamp = cache.stat().st_mtime_ns
    load_on(1, tag_dir, tmp_path / "again.pt")
    assert cache.stat().st_mtime_ns == stamp  # not converted a second time
    (tag_dir / "COMMIT.json").write_text(json.dumps({**read_commit(tag_dir), "saved_at": 1.0}))  # saved again
    assert not universal.is_current(tag_dir)
    load_on(1, tag_dir, tmp_path / "rebuilt.pt")
    assert universal.is_current(tag_dir)


@pytest.mark.dist
@pytest.mark.slow
def test_engine_without_universal_loading_gets_an_error_that_says_what_to_do(tags, tmp_path):
    tag_dir = copy_tag(tags, "z2_w2", tmp_path)
    result = load_on(1, tag_dir, tmp_path / "loaded.pt", enable=False)
    assert "saved on 2 ranks and this run has 1" in result["error"] and "load_universal" in result["error"]


def test_a_failed_conversion_names_the_tag_and_the_single_file_way_out(tmp_path):
    tag_dir = tmp_path / "ckpts" / "step_000002"
    tag_dir.mkdir(parents=True)
    (tag_dir / "COMMIT.json").write_text(json.dumps({"world_size": 2, "files": {}}))
    with pytest.raises(UniversalError, match=r"step_000002.*single file"):
        universal.prepare(tag_dir)
    assert not universal.cache_of(tag_dir).exists()
