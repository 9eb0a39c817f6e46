"""CheckpointManager on real 2-rank engines (gloo): saves on a schedule with retention, exports last.pth in the
background (waited for on close), and restores the newest tag into a fresh engine exactly."""
from __future__ import annotations

import os
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from deepspeed.utils import safe_get_full_fp32_param
from support.tag_factory import DS_JSON, OVERRIDES, TOTAL_STEPS, Toy, train_step
from support.train_utils import free_port

from ds_deblur import distributed
from ds_deblur.ckpt import CheckpointManager, CheckpointOptions, TrainState
from ds_deblur.ckpt.single_file import load_single_file
from ds_deblur.ckpt.tags import read_latest
from ds_deblur.config import load_config
from ds_deblur.zero.setup import initialize, read_ds_json, resolve_ds_config

STEPS = 4


def full_weights(engine) -> dict:
    return {name: safe_get_full_fp32_param(p).clone() for name, p in engine.module.named_parameters()}


def build(rank: int, world: int, save_dir: Path, seed: int):
    cfg = load_config({"DATA": {"ROOT": "/unused"}},
                      [*OVERRIDES, f"LOG.SAVE_DIR={save_dir}", "LOG.KEEP_LAST=1", "LOG.SAVE_EVERY_STEPS=2"])
    ds = resolve_ds_config(read_ds_json(DS_JSON["fp32"]), cfg, world)
    said: list[str] = []
    manager = CheckpointManager(CheckpointOptions.from_config(cfg), cfg, None, world, "fp32", said.append)
    torch.manual_seed(seed)
    model = Toy()
    manager.prepare(Namespace(resume="auto", init_weights=None, reset_optimizer=False), model, ds)
    engine = initialize(model, cfg, ds, TOTAL_STEPS)
    return manager, engine, manager.restore(engine), said


def save_then_restore(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init()
    save_dir = Path(root) / "run"
    manager, engine, state, _ = build(rank, world, save_dir, seed=0)
    assert state == TrainState()  # nothing saved yet: a fresh start
    for step in range(1, STEPS + 1):
        train_step(engine, step, rank, torch.float32)
        state.step = step
        if manager.due(step):
            manager.save(state)
    manager.close()
    saved = full_weights(engine)
    resumed, engine2, state2, said = build(rank, world, save_dir, seed=1)  # other initial weights
    restored = full_weights(engine2)
    resumed.close()
    if rank == 0:
        torch.save({"saved": saved, "restored": restored, "step": state2.step, "said": said}, Path(root) / "out.pt")
    distributed.end_rank()


@pytest.mark.dist
@pytest.mark.slow
def test_save_export_retention_and_restore(tmp_path):
    mp.spawn(save_then_restore, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "out.pt", weights_only=False)
    ckpts = tmp_path / "run" / "ckpts"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_000004"]  # KEEP_LAST 1
    assert read_latest(ckpts) == "step_000004"
    single = load_single_file(ckpts / "last.pth")  # exported in the background, waited for by close()
    assert single["meta"]["source_tag"] == "step_000004" and single["step"] == STEPS
    assert all(torch.equal(single["state_dict"][k], v) for k, v in out["saved"].items())
    assert out["step"] == STEPS and "[train] Resuming from step 4 (epoch 0), best PSNR so far -inf" in out["said"]
    assert all(torch.equal(out["restored"][k], v) for k, v in out["saved"].items())
