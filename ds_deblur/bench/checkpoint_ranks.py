"""The ranks of the checkpoint benchmark (run under torchrun): build the trainer's engine for the config, take one
optimizer step so that every tensor a checkpoint holds exists, then time ``--repeats`` saves of a tag (the trainer's
own ``checkpoint.save``: DeepSpeed's files, RNG, fsync, commit marker, ``latest``) and as many loads of it, and on
rank 0 one ``torch.save`` + fsync (and ``torch.load``) of a single tensor of the same size as the tag. The step's
loss is the sum of all parameters times zero: it runs the real backward hooks, reduction and AdamW step without a
forward of the model at its training shape (base at 256x256 needs ~16 GB a rank on a CPU). Rank 0 writes
``OUT/ranks.json``; the last tag stays in ``OUT/ckpts`` for the converter timings.

    python -m torch.distributed.run --nproc_per_node 2 -m ds_deblur.bench.checkpoint_ranks --config C --out DIR
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ds_deblur import checkpoint, distributed, engine as eng
from ds_deblur.bench.common import dir_bytes, ds_json_for_stage
from ds_deblur.config import load_config
from ds_deblur.models import build_model
from ds_deblur.single_file import fsync_path


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
    cfg = load_config(args.config, [*args.set, "DATA.ROOT=unused"])
    rank, world = distributed.init()
    ds, source = ds_json_for_stage(args.stage)
    ds = eng.resolve_ds_config(ds, cfg, world, source=source)
    engine = eng.initialize(build_model(cfg), cfg, ds, total_steps=10)
    for _ in range(engine.gradient_accumulation_steps()):  # one optimizer step
        engine.backward(sum((p * 0).sum() for p in engine.module.parameters()).float())
        engine.step()
    ckpts = args.out / "ckpts"
    saves, loads, sizes = [], [], []
    for i in range(1, args.repeats + 1):
        tag = checkpoint.step_tag(i)
        state = checkpoint.client_state(checkpoint.TrainState(step=i), {}, cfg.to_dict(), engine,
                                        eng.precision_of(ds))
        saves.append(_timed(lambda: checkpoint.save(engine, ckpts, tag, state)))
        sizes.append(dir_bytes(ckpts / tag))
        if rank == 0 and i > 1:
            shutil.rmtree(ckpts / checkpoint.step_tag(i - 1))  # keep one tag on disk
        distributed.barrier()
    for _ in range(args.repeats):
        loads.append(_timed(lambda: checkpoint.load(engine, ckpts, checkpoint.step_tag(args.repeats))))
    if rank == 0:
        raw = [_raw_write_read(args.out / "raw.pt", sizes[-1]) for _ in range(args.repeats)]
        params = sum(p.numel() for p in engine.module.parameters())
        (args.out / "ranks.json").write_text(json.dumps({
            "world_size": world, "stage": args.stage, "precision": eng.precision_of(ds), "params": params,
            "tag": checkpoint.step_tag(args.repeats), "tag_bytes": sizes, "save_s": saves, "load_s": loads,
            "raw_save_s": [w for w, _ in raw], "raw_load_s": [r for _, r in raw], "cpus": os.cpu_count()}))
    return 0


if __name__ == "__main__":
    distributed.end_rank(main())
