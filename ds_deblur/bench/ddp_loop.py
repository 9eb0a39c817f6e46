"""The baseline of the engine benchmark: a plain PyTorch DDP train loop on the trainer's model, data, loss, AdamW
and LR schedule (AMP fp16 with a GradScaler when --fp16 on a GPU). Run under torchrun; rank 0 writes the
per-step times as JSON.

    python -m torch.distributed.run --nproc_per_node 2 -m ds_deblur.bench.ddp_loop --config C [--set K=V ...]
        --warmup 2 --steps 8 --out times.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ds_deblur.config import load_config
from ds_deblur.data import build_dataloaders
from ds_deblur.losses import DeblurLoss
from ds_deblur.models import build_model
from ds_deblur.zero.setup import build_scheduler


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ds_deblur.bench.ddp_loop", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--steps", type=int, default=8, help="timed steps after the warm-up")
    parser.add_argument("--fp16", action="store_true", help="autocast fp16 + GradScaler (GPU only)")
    parser.add_argument("--out", required=True, help="JSON file for the per-step times (rank 0)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.set)
    if cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS != 1:
        raise SystemExit("ddp_loop: the baseline steps once per batch; set TRAIN.GRADIENT_ACCUMULATION_STEPS=1")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.SEED)
    loader, _ = build_dataloaders(cfg, rank, world)
    model = DistributedDataParallel(build_model(cfg).to(device), device_ids=[device.index] if cuda else None)
    loss_fn = DeblurLoss.from_config(cfg).to(device)
    train, optim = cfg.TRAIN, cfg.TRAIN.OPTIM
    optimizer = torch.optim.AdamW(model.parameters(), lr=optim.LR, betas=tuple(optim.BETAS),
                                  weight_decay=optim.WEIGHT_DECAY, eps=1e-8, fused=cuda or None)
    total = args.warmup + args.steps
    scheduler = build_scheduler(optimizer, cfg, total)
    amp = args.fp16 and cuda
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    step_times, data_times, epoch = [], [], 0
    while len(step_times) < total:
        loader.set_epoch(epoch)
        started = time.perf_counter()
        for batch in loader:
            waited = time.perf_counter() - started
            blur, spike = batch["blur"].to(device), batch["spike_vox"].to(device)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                restored = model(blur, spike)
            loss, _ = loss_fn(restored.float(), batch["sharp"].to(device))
            scaler.scale(loss).backward()
            if train.MAX_GRAD_NORM > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.MAX_GRAD_NORM)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            loss.item()  # what logging the loss costs (a device sync on a GPU); the trainer logs every step too
            step_times.append(time.perf_counter() - started)
            data_times.append(waited)
            if len(step_times) == total:
                break
            started = time.perf_counter()
        epoch += 1
    if rank == 0:
        Path(args.out).write_text(json.dumps({"step_time_s": step_times[args.warmup:],
                                              "data_time_s": data_times[args.warmup:], "world_size": world}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
