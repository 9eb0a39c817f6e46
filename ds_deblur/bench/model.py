"""model: forward and forward+backward time and peak memory of the tiny and base presets, with and without
activation checkpointing (``ds_deblur.bench.model_speed``). Training shapes: tiny 1x5x64x64, base 1x5x256x256 (K 32).
On a CPU, base runs at ``--cpu-base-shape`` instead: at 256x256 one training step needs about 16x the memory
measured at 64x64 (16.6 GB without checkpointing), more than a workstation has.

``--reference PATH/network_vrt.py``: instead, our VRT side by side with the official code (``ds_deblur.bench.
official_vrt``): the vrt_gopro preset, same weights, one clip of ``--reference-shape``, at each ``--reference-threads``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ds_deblur.bench.common import format_table, positive_int
from ds_deblur.bench.model_speed import TRAIN_SHAPES, measure
from ds_deblur.bench.official_vrt import compare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", nargs="+", default=["tiny", "base"], choices=sorted(TRAIN_SHAPES))
    parser.add_argument("--repeats", type=positive_int, default=2, help="timed runs per measurement after one warm-up")
    parser.add_argument("--cpu-base-shape", nargs=5, type=int, default=[1, 3, 64, 64, 32],
                        metavar=("B", "T", "H", "W", "K"), help="the base preset's input on a CPU")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--reference", type=Path, metavar="PATH/network_vrt.py",
                        help="compare our VRT with the official one in this file (JingyunLiang/VRT models/)")
    parser.add_argument("--reference-shape", nargs=3, type=positive_int, default=[6, 64, 64], metavar=("T", "H", "W"))
    parser.add_argument("--reference-threads", nargs="+", type=positive_int, default=[1, 2])
    parser.add_argument("--rounds", type=positive_int, default=3, help="--reference: rounds, the models taking turns")


def run(args: argparse.Namespace, work: Path) -> dict:
    if args.reference is not None:
        return {"reference": str(args.reference), **compare(args.reference, tuple(args.reference_shape),
                                                            args.reference_threads, args.rounds)}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for preset in args.preset:
        shape = TRAIN_SHAPES[preset]
        if device.type == "cpu" and preset == "base":
            shape = tuple(args.cpu_base_shape)
        for checkpointing in (False, True):
            rows.append(measure(preset, shape, device, checkpointing, args.repeats))
            print(f"[bench model] {rows[-1]}", flush=True)
    return {"settings": {"device": str(device), "repeats": args.repeats, "threads": torch.get_num_threads()},
            "rows": rows}


def table(results: dict) -> str:
    if "reference" in results:
        return format_table(["threads", "official fwd+bwd s", "ours fwd+bwd s", "official / ours"],
                            [[r["threads"], r["official_s"], r["ours_s"], r["official_over_ours"]]
                             for r in results["rows"]])
    return format_table(
        ["preset", "B x T x H x W x K", "checkpointing", "forward ms", "fwd+bwd ms", "peak fwd MiB", "peak train MiB"],
        [[r["preset"], "x".join(map(str, r["shape_BTHWK"])), "on" if r["checkpointing"] else "off",
          r["forward_ms"], r["forward_backward_ms"], r["forward_peak_MiB"], r["forward_backward_peak_MiB"]]
         for r in results["rows"]])
