"""The ranks of the checkpoint benchmark (run under torchrun): build the trainer's engine for the config, take one
optimizer step so that every tensor a checkpoint holds exists, then time saves two ways, interleaved:

- ``tag``: writing the tag itself (DeepSpeed's files, RNG, fsync, commit marker, ``latest``);
- ``blocked``: the trainer's save, ``CheckpointManager.save``, whose single-file export runs in rank 0's background
  thread.

Each time runs from a common start until every rank is back (what training is blocked for). Between timed saves
the background export is waited for, untimed, and its own duration recorded. Then ``--repeats`` loads of the last
tag, and on rank 0 one ``torch.save`` + fsync (and ``torch.load``) of a single tensor of the tag's size. The
step's loss is the sum of all parameters times zero: it runs the real backward hooks, reduction and AdamW step
without a forward of the model at its training shape (base at 256x256 needs ~16 GB a rank on a CPU). Rank 0
writes ``OUT/ranks.json``; the last tag stays in ``OUT/ckpts`` for the converter timings.

    python -m torch.distributed.run --nproc_per_node 2 -m ds_deblur.bench.checkpoint_ranks --config C --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from ds_deblur import distributed
from ds_deblur.bench.common import dir_bytes, ds_json_for_stage
from ds_deblur.ckpt import CheckpointManager, CheckpointOptions, TrainState
from ds_deblur.ckpt.atomic import fsync_path
from ds_deblur.ckpt.retention import retain
from ds_deblur.ckpt.state import client_state
from ds_deblur.ckpt.tag_io import load_tag, save_tag
from ds_deblur.ckpt.tags import step_tag
from ds_deblur.config import load_config
from ds_deblur.models import build_model
from ds_deblur.zero import setup as eng

MODES = ("tag", "blocked")


def _timed(action: Callable[[], object]) -> float:
    """Seconds of ``action`` on all ranks together (from a common start to the last rank's end)."""
    distributed.barrier()
    start = time.perf_counter()
    action()
    distributed.barrier()
    return time.perf_counter() - start


def _raw_write_read(path: Path, size: int) -> tuple[float, float]:
    blob = torch.randint(0, 256, (size,), dtype=torch.uint8)
    start = time.perf_counter()
    torch.save(blob, path)
    fsync_path(path)
    written = time.perf_counter() - start
    start = time.perf_counter()
    torch.load(path, weights_only=True)
    read = time.perf_counter() - start
    path.unlink()
    return written, read


class SaveModes:
    """The two ways of saving, on the same engine and directory."""

    def __init__(self, engine: Any, manager: CheckpointManager, precision: str, world: int) -> None:
        self.engine, self.manager, self.precision, self.world = engine, manager, precision, world
        self.dir = manager.dir

    def run(self, mode: str, step: int) -> None:
        if mode == "blocked":
            self.manager.save(TrainState(step=step))
            return
        state = client_state(TrainState(step=step), {}, self.manager.cfg.to_dict(), self.engine, self.precision,
                             self.world)
        save_tag(self.engine, self.dir, step_tag(step), state)
        distributed.barrier()

    def settle(self) -> Optional[float]:
        """Untimed: wait for a background export, keep one tag on disk; returns the export's seconds, if any."""
        exporter = self.manager.exporter
        seconds = None
        if exporter is not None:
            exporter.wait()
            seconds = exporter.written[-1][1] if exporter.written else None
            exporter.written.clear()
        if distributed.is_main():
            retain(self.dir, 1)
        distributed.barrier()
        return seconds


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ds_deblur.bench.checkpoint_ranks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--stage", type=int, default=2, choices=[0, 1, 2],
                        help="ZeRO stage (the zero-loss step needs whole parameters, so not 3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [*args.set, "DATA.ROOT=unused", f"LOG.SAVE_DIR={args.out}", "LOG.KEEP_LAST=1"])
    rank, world = distributed.init()
    ds, source = ds_json_for_stage(args.stage)
    ds = eng.resolve_ds_config(ds, cfg, world, source=source)
    engine = eng.initialize(build_model(cfg), cfg, ds, total_steps=10)
    for _ in range(engine.gradient_accumulation_steps()):  # one optimizer step
        engine.backward(sum((p * 0).sum() for p in engine.module.parameters()).float())
        engine.step()
    manager = CheckpointManager(CheckpointOptions.from_config(cfg), cfg, None, world, eng.precision_of(ds))
    manager.restore(engine)
    modes = SaveModes(engine, manager, eng.precision_of(ds), world)
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    exports, sizes, step = [], [], 0
    for i in range(args.repeats):
        for mode in MODES[i % 3:] + MODES[:i % 3]:  # rotated, so no mode always follows the same one
            step += 1
            times[mode].append(_timed(lambda: modes.run(mode, step)))
            sizes.append(dir_bytes(manager.dir / step_tag(step)))
            export = modes.settle()
            if export is not None:
                exports.append(export)
    loads = [_timed(lambda: load_tag(engine, manager.dir / step_tag(step))) for _ in range(args.repeats)]
    manager.close()
    if rank == 0:
        raw = [_raw_write_read(args.out / "raw.pt", sizes[-1]) for _ in range(args.repeats)]
        params = sum(p.numel() for p in engine.module.parameters())
        (args.out / "ranks.json").write_text(json.dumps({
            "world_size": world, "stage": args.stage, "precision": eng.precision_of(ds), "params": params,
            "tag": step_tag(step), "tag_bytes": sizes, "save_s": times["tag"],
            "blocked_s": times["blocked"],
            "background_export_s": exports, "load_s": loads, "raw_save_s": [w for w, _ in raw],
            "raw_load_s": [r for _, r in raw], "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    distributed.end_rank(main())
