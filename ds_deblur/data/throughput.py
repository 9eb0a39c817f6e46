"""Data pipeline throughput (a measurement, not a test).

    python -m ds_deblur.data.throughput [--out throughput.json] [--batches 30] [--workers 0 2] [--work-dir DIR]

Generates two synthetic datasets in a temporary folder (or ``--work-dir``): ``tiny`` at 96x96 RGB with
96x96 spikes, and ``base`` at 256x320 RGB with a 128x160 spike sensor (half the RGB size, like GoPro-spike's
360x640 spikes for 720x1280 RGB, on a smaller frame to keep generation quick). For each it times the training
loader (batch 1, CLIP_LEN 5, K 32; crop 64 for tiny, 256 for base) reading ``.dat`` files and the voxel cache,
with each worker count, and reports clips/s. It also reports ``.dat`` -> voxel speed in MB/s of ``.dat`` read
for full-size 360x640 and 250x400 streams. Prints a table; ``--out`` saves it with the raw timings as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ds_deblur.config import load_config

from .loader import build_dataloaders
from .prepare import prepare
from .spike_io import write_dat
from .synth import SynthConfig, generate
from .voxel import voxelize_dat

SHAPES = {
    "tiny": (SynthConfig(seed=0, train_seqs=2, val_seqs=1, frames=12), 64),
    "base": (SynthConfig(seed=0, train_seqs=2, val_seqs=1, frames=8, size=(256, 320), spike_size=(128, 160)), 256),
}
K, CLIP_LEN = 32, 5


def time_loader(root: Path, crop: int, workers: int, cache: bool, batches: int, warmup: int = 3) -> list[float]:
    """Seconds for each of ``batches`` consecutive training batches (after ``warmup`` untimed ones)."""
    cfg = load_config({"DATA": {"ROOT": str(root), "CLIP_LEN": CLIP_LEN, "CROP_SIZE": crop, "K": K,
                                "USE_PRECOMPUTED_VOXELS": cache},
                       "DATALOADER": {"NUM_WORKERS": workers, "PERSISTENT_WORKERS": False}})
    loader = build_dataloaders(cfg, num_workers=workers)[0]
    times: list[float] = []
    epoch = 0
    while len(times) < batches:
        loader.set_epoch(epoch)
        last = time.perf_counter()
        for i, _ in enumerate(loader):
            now = time.perf_counter()
            if i >= warmup or epoch > 0:
                times.append(now - last)
            last = now
            if len(times) == batches:
                break
        epoch += 1
    return times


def time_voxelize(folder: Path, spike_size: tuple[int, int], frames: int, repeats: int) -> dict:
    """Seconds per ``voxelize_dat`` of a ``frames``-frame stream (file in the page cache)."""
    path = folder / f"bench_{spike_size[0]}x{spike_size[1]}.dat"
    write_dat(path, np.random.default_rng(0).random((frames, *spike_size)) < 0.2)
    voxelize_dat(path, spike_size, K)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        voxelize_dat(path, spike_size, K)
        times.append(time.perf_counter() - start)
    size_mb = path.stat().st_size / 1e6
    return {"spike_size": list(spike_size), "frames": frames, "mb": size_mb, "seconds": times,
            "mb_per_s": size_mb / float(np.median(times))}


def run(work: Path, batches: int, workers: Sequence[int]) -> dict:
    results: dict = {"host": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                              "python": platform.python_version(),
                              "torch": torch.__version__, "load_average_start": os.getloadavg()},
                     "loader": [], "voxelize": []}
    for name, (synth, crop) in SHAPES.items():
        root = work / name
        start = time.perf_counter()
        generate(root, synth)
        prepare(root, k=K)
        print(f"[throughput] {name}: dataset generated and prepared in {time.perf_counter() - start:.1f}s")
        for cache in (False, True):
            for w in workers:
                times = time_loader(root, crop, w, cache, batches)
                results["loader"].append({
                    "shape": name, "rgb": list(synth.size), "spike": list(synth.sensor_size()), "crop": crop,
                    "clip_len": CLIP_LEN, "k": K, "source": "cache" if cache else "dat", "workers": w,
                    "clips_per_s": len(times) / sum(times), "seconds_per_batch": times})
    for size in ((360, 640), (250, 400)):
        results["voxelize"].append(time_voxelize(work, size, frames=256, repeats=5))
    results["host"]["load_average_end"] = os.getloadavg()  # other jobs on the machine skew every number
    return results


def table(results: dict) -> str:
    lines = [f"{'shape':<6}{'rgb':>9}{'spike':>9}{'crop':>6}{'T':>3}{'K':>4}{'source':>8}{'workers':>9}{'clips/s':>10}"]
    for r in results["loader"]:
        lines.append(f"{r['shape']:<6}{'x'.join(map(str, r['rgb'])):>9}{'x'.join(map(str, r['spike'])):>9}"
                     f"{r['crop']:>6}{r['clip_len']:>3}{r['k']:>4}{r['source']:>8}{r['workers']:>9}"
                     f"{r['clips_per_s']:>10.2f}")
    lines.append("")
    lines.append(f"{'.dat -> voxel (K=32)':<24}{'frames':>8}{'MB':>8}{'MB/s':>9}")
    for r in results["voxelize"]:
        lines.append(f"{'x'.join(map(str, r['spike_size'])):<24}{r['frames']:>8}{r['mb']:>8.2f}{r['mb_per_s']:>9.1f}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ds_deblur.data.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the results (with raw timings) to this JSON file")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per configuration")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    parser.add_argument("--work-dir", help="where to generate the datasets (default: a temporary folder)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of this process (default 1: with 0 workers, collation runs here, and "
                             "on a busy CPU multi-threaded small copies measure contention, not the loader)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as work:
        results = run(Path(work), args.batches, args.workers)
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"[throughput] raw timings -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
