"""CheckpointManager on real 2-rank engines (gloo): saves on a schedule with retention, exports last.pth in the
background (waited for on close), and restores the newest tag into a fresh engine exactly: weights, Adam moments and
steps, LR schedule, every rank's RNG streams and every TrainState field."""
from __future__ import annotations

import os
import random
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from deepspeed.utils import safe_get_full_fp32_param

from ds_deblur import distributed
from ds_deblur.ckpt import CheckpointManager, CheckpointOptions, TrainState
from ds_deblur.ckpt.manager import resume_request
from ds_deblur.ckpt.single_file import load_single_file
from ds_deblur.ckpt.tags import read_latest
from ds_deblur.config import load_config
from ds_deblur.zero.setup import initialize, read_ds_json, resolve_ds_config
from support.tag_factory import DS_JSON, OVERRIDES, TOTAL_STEPS, Toy, train_step
from support.train_utils import free_port

STEPS = 4
# What the run is at when it saves last: no field at its default, so a field left unrestored shows.
AT_SAVE = dict(step=STEPS, epoch=1, best_psnr=27.5, best_step=2)


def full_weights(engine) -> dict:
    return {name: safe_get_full_fp32_param(p).clone() for name, p in engine.module.named_parameters()}


def snapshot(engine) -> dict:
    """What an exact restore must give back, on this rank: fp32 weights, the Adam moments and step counts of this
    rank's partitions (in the base optimizer's own order), the LR of each group and the schedule's state, and the
    python, numpy and torch RNG states."""
    base = engine.optimizer.optimizer  # AdamW on ZeRO's flat fp32 partitions
    states = [base.state[flat] for group in base.param_groups for flat in group["params"]]
    return {
        "weights": full_weights(engine),
        "moments": {f"{i}.{key}": state[key].clone() for i, state in enumerate(states)
                    for key in ("exp_avg", "exp_avg_sq")},
        "adam_steps": [float(state["step"]) for state in states],
        "lr": [group["lr"] for group in engine.optimizer.param_groups],
        "schedule": engine.lr_scheduler.state_dict(),
        "rng": {"python": random.getstate(), "numpy": np.random.get_state()[1].tolist(),
                "torch": torch.get_rng_state()},
    }


def perturb_rngs() -> None:
    """Move every RNG stream away from where the save left it (so only a restore brings it back)."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


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
        if step == STEPS:
            state = TrainState(**AT_SAVE)
            saved = snapshot(engine)
        if manager.due(step):
            manager.save(state)
    manager.close()
    perturb_rngs()
    resumed, engine2, state2, said = build(rank, world, save_dir, seed=1)  # other initial weights
    restored = snapshot(engine2)
    resumed.close()
    torch.save({"saved": saved, "restored": restored, "state": vars(state2), "said": said},
               Path(root) / f"out_rank{rank}.pt")
    distributed.end_rank()


@pytest.mark.dist
@pytest.mark.slow
def test_save_export_retention_and_restore(tmp_path):
    mp.spawn(save_then_restore, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    out = torch.load(tmp_path / "out_rank0.pt", weights_only=False)
    ckpts = tmp_path / "run" / "ckpts"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["step_000004"]  # KEEP_LAST 1
    assert read_latest(ckpts) == "step_000004"
    single = load_single_file(ckpts / "last.pth")  # exported in the background, waited for by close()
    assert single["meta"]["source_tag"] == "step_000004" and single["step"] == STEPS
    assert all(torch.equal(single["state_dict"][k], v) for k, v in out["saved"]["weights"].items())
    assert "[train] Resuming from step 4 (epoch 1), best PSNR so far 27.5000" in out["said"]
    assert "[train] ✓ RNG state loaded" in out["said"]
    for rank in (0, 1):
        check_restored_exactly(torch.load(tmp_path / f"out_rank{rank}.pt", weights_only=False))


def check_restored_exactly(out: dict) -> None:
    """A rank's state after the restore equals its state at the save, item by item."""
    saved, restored = out["saved"], out["restored"]
    assert out["state"] == AT_SAVE  # every TrainState field
    for part in ("weights", "moments"):
        assert saved[part].keys() == restored[part].keys()
        assert all(torch.equal(restored[part][k], v) for k, v in saved[part].items()), part
    assert restored["adam_steps"] == saved["adam_steps"] and saved["adam_steps"][0] == STEPS
    assert restored["lr"] == saved["lr"] and restored["schedule"] == saved["schedule"]
    rng_saved, rng_restored = saved["rng"], restored["rng"]
    assert rng_restored["python"] == rng_saved["python"] and rng_restored["numpy"] == rng_saved["numpy"]
    assert torch.equal(rng_restored["torch"], rng_saved["torch"])


@pytest.mark.parametrize("sets, cli, init, want", [
    ([], None, None, None),
    ([], "outputs/ckpts/last.pth", None, "outputs/ckpts/last.pth"),
    (["TRAIN.RESUME_FROM_CHECKPOINT=true"], None, None, "auto"),
    (["TRAIN.RESUME_FROM_CHECKPOINT=true", "TRAIN.CHECKPOINT_PATH=run/ckpts/best.pth"], None, None,
     "run/ckpts/best.pth"),
    (["TRAIN.RESUME_FROM_CHECKPOINT=true", "TRAIN.CHECKPOINT_PATH=run/ckpts/best.pth"], "auto", None, "auto"),
    (["TRAIN.RESUME_FROM_CHECKPOINT=true"], None, "w.pth", None),
    (["TRAIN.CHECKPOINT_PATH=run/ckpts/best.pth"], None, None, None),  # only RESUME_FROM_CHECKPOINT resumes
])
def test_resume_request_from_the_config_and_the_command_line(sets, cli, init, want):
    cfg = load_config({"DATA": {"ROOT": "/d"}}, sets)
    target, said = resume_request(cfg, cli, init)
    assert target == want
    if "TRAIN.RESUME_FROM_CHECKPOINT=true" in sets and cli is None:
        assert said.startswith("[train] TRAIN.RESUME_FROM_CHECKPOINT")
        assert ("--init-weights" in said) if init else ("outputs/ckpts" in said or "best.pth" in said)
    else:
        assert said is None
