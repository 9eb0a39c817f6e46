"""data: clips/s of the training loader (tiny shape, and base at the real GoPro spike size: 720x1280 RGB, 360x640 x 64
spike streams, crop 256; the voxel grid, and at base also S-VRT's TFP and raw window; from ``.dat`` and from the
prepared files; 0, 2 and 4 workers) with the bytes read per clip, against the clips/s one rank's training step
consumes, and ``.dat`` -> voxel MB/s (``ds_deblur.bench.loader_speed``).

Consumption is measured here for tiny (forward+backward of the model at the loader's shape, one rank). For base
on a CPU, where its training step does not fit, the reference is the original trainer's 0.5 samples/s on 3 GPUs
(0.17 clips/s per GPU); on a GPU it is measured.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ds_deblur.bench import loader_speed
from ds_deblur.bench.common import format_table, positive_int
from ds_deblur.bench.model_speed import measure

ORIGINAL_PER_GPU = 0.5 / 3  # clips/s per GPU of the original torchrun/AMP loop (batch 1, 5 frames, 256x256)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=positive_int, default=30, help="timed batches per loader configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4], help="loader worker counts")
    parser.add_argument("--reprs", nargs="+", choices=list(loader_speed.REPRS), default=list(loader_speed.REPRS),
                        help="spike representations to time (where a shape has them)")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads of this process (1: as each rank runs on a shared CPU)")


def run(args: argparse.Namespace, work: Path) -> dict:
    torch.set_num_threads(args.threads)
    results = loader_speed.run(work, args.batches, args.workers, args.reprs)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = {"tiny": (1, loader_speed.CLIP_LEN, 64, 64, loader_speed.K),
              "base": (1, loader_speed.CLIP_LEN, 256, 256, loader_speed.K)}
    consumption = []
    for shape_name, shape in shapes.items():
        if shape_name == "base" and device.type == "cpu":
            consumption.append({"shape": shape_name, "clips_per_s": ORIGINAL_PER_GPU,
                                "source": "original trainer: 0.5 samples/s on 3 GPUs"})
            continue
        row = measure(shape_name, shape, device, checkpointing=False, repeats=2)
        consumption.append({"shape": shape_name, "clips_per_s": 1000.0 / row["forward_backward_ms"],
                            "source": f"forward+backward on {device}, 1 rank", "model": row})
    return {"settings": {"batches": args.batches, "workers": args.workers, "threads": args.threads,
                         "reprs": args.reprs},
            **results, "consumption": consumption}


def table(results: dict) -> str:
    rows = []
    for need in results["consumption"]:
        loaders = [r for r in results["loader"] if r["shape"] == need["shape"]]
        if not loaders:  # --reprs left this shape out
            continue
        slowest = min(loaders, key=lambda r: r["clips_per_s"])
        rows.append([need["shape"], f"{need['clips_per_s']:.3f}", need["source"],
                     f"{slowest['clips_per_s']:.2f} ({slowest['repr']} from {slowest['source']}, "
                     f"{slowest['workers']} workers)",
                     f"{slowest['clips_per_s'] / need['clips_per_s']:.0f}x"])
    return (loader_speed.table(results) + "\n\n"
            + format_table(["shape", "step consumes clips/s", "measured by", "slowest loader clips/s", "headroom"],
                           rows))
