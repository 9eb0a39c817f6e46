"""The ranks of the memory benchmark (run under torchrun): for each ZeRO stage, build the engine on the trainer's
model with its sharded EMA (TRAIN.EMA_DECAY; ZeRO 1-3), take two optimizer steps on a random batch of the training
shape, and record what the engine holds on this rank after the second backward (parameters, gradients, fp32 master
weights, optimizer state, EMA weights and gradient buckets all live) and the peak memory of the stage. Each rank
writes ``OUT/stage{S}_rank{R}.json``.

    python -m torch.distributed.run --nproc_per_node N -m ds_deblur.bench.memory_ranks --config C --out DIR
"""
from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ds_deblur import distributed
from ds_deblur.bench.common import ds_json_for_stage
from ds_deblur.bench.model_speed import PeakMemory
from ds_deblur.config import load_config
from ds_deblur.losses import DeblurLoss
from ds_deblur.models import build_model
from ds_deblur.zero import setup as eng
from ds_deblur.zero.ema import ShardedEMA

EMA_DECAY = 0.999  # KAIR's usual E_decay; the memory does not depend on it


def _tensors(value: Any, depth: int = 3) -> Iterator[torch.Tensor]:
    """Tensors inside ``value``: itself, or in its lists, tuples, dicts and (bucket) objects, ``depth`` levels."""
    if torch.is_tensor(value):
        yield value
    elif depth > 0 and isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, depth - 1)
    elif depth > 0 and isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item, depth - 1)
    elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, (torch.nn.Module, type)):
        for item in vars(value).values():
            yield from _tensors(item, depth - 1)


def _attributes(obj: Any, *words: str) -> list[torch.Tensor]:
    return [t for name, value in vars(obj).items() if any(w in name.lower() for w in words) for t in _tensors(value)]


def _innermost(optimizer: Any) -> torch.optim.Optimizer:
    while not isinstance(optimizer, torch.optim.Optimizer) or hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def held_bytes(engine: Any, ema: Optional[ShardedEMA] = None) -> dict[str, int]:
    """Bytes of tensor storage this rank holds, by role, each storage counted once (in the first role that has it).

    Read from the engine's own objects: module parameters (ZeRO 3: this rank's ``ds_tensor`` partitions and the
    parameters it keeps whole), the torch optimizer's state, the ZeRO optimizer's fp32 and gradient attributes, its
    reduction buckets (allocated size; on a CPU only the touched pages are resident), and every tensor alive in the
    process; ``ema``: the EMA's partitions (role ``ema``)."""
    params = list(engine.module.parameters())
    wrapper, base = engine.optimizer, _innermost(engine.optimizer)
    roles = {
        # ZeRO 3: the partition, plus the whole tensor of parameters it keeps gathered (under its persistence
        # threshold, or not yet released); a released one's data is empty.
        "parameters": [p.data for p in params] + [p.ds_tensor for p in params if hasattr(p, "ds_tensor")],
        "master_weights": _attributes(wrapper, "fp32") if wrapper is not base else [],
        "optimizer_state": [t for state in base.state.values() for t in _tensors(state)],
        "gradients": [p.grad for p in params if p.grad is not None] + _attributes(wrapper, "grad"),
        "buckets": _attributes(wrapper, "ipg"),
        "ema": list(ema.shadow) if ema is not None else [],
    }
    seen: set[int] = set()
    held = {}
    for role, tensors in roles.items():
        held[role] = 0
        for tensor in tensors:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in seen and storage.nbytes():
                seen.add(storage.data_ptr())
                held[role] += storage.nbytes()
    alive = {}
    for obj in gc.get_objects():
        if torch.is_tensor(obj) and obj.device.type != "meta":
            storage = obj.untyped_storage()
            alive[storage.data_ptr()] = storage.nbytes()
    held["all_tensors"] = sum(alive.values())
    return held


def measure_stage(cfg: Any, stage: int, device: torch.device) -> dict:
    ds, source = ds_json_for_stage(stage)
    world = torch.distributed.get_world_size()
    ds = eng.resolve_ds_config(ds, cfg, world, source=source)
    peak = PeakMemory(device)
    peak.start()
    torch.manual_seed(cfg.SEED)
    engine = eng.initialize(build_model(cfg), cfg, ds, total_steps=10)
    ema = ShardedEMA(engine, EMA_DECAY) if stage > 0 else None  # ZeRO 0 has no fp32 partitions to follow
    loss_fn = DeblurLoss.from_config(cfg).to(device)
    b, t, (h, w), k = cfg.TRAIN.BATCH_SIZE, cfg.DATA.CLIP_LEN, cfg.DATA.crop_hw, cfg.DATA.spike_channels
    dtype = next(engine.module.parameters()).dtype
    blur, spike = torch.rand(b, t, 3, h, w, device=device), torch.randn(b, t, k, h, w, device=device)
    sharp = torch.rand(b, t, 3, h, w, device=device)
    micro = engine.gradient_accumulation_steps()
    for i in range(2 * micro):  # two optimizer steps
        loss, _ = loss_fn(engine(blur.to(dtype), spike.to(dtype)).float(), sharp)
        engine.backward(loss)
        if i == 2 * micro - 1:
            held = held_bytes(engine, ema)
        engine.step()
        if ema is not None:
            ema.after_step()  # averages only the steps DeepSpeed applied (not the accumulation micro-steps)
    row = {"stage": stage, "world_size": world, "rank": torch.distributed.get_rank(),
           "params": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in engine.module.parameters()),
           "held_bytes": held, "peak_mib": peak.stop()}
    engine.destroy()
    del engine, loss_fn
    gc.collect()
    return row


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ds_deblur.bench.memory_ranks",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [*args.set, "DATA.ROOT=unused"])
    distributed.init()
    device = distributed.device()
    for stage in args.stages:
        row = measure_stage(cfg, stage, device)
        (args.out / f"stage{stage}_rank{row['rank']}.json").write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    distributed.end_rank(main())
