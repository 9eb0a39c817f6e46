"""Precompute the spike voxel cache and the dataset's voxel statistics.

    ds-deblur prepare ROOT [--k 32] [--spike-size H W] [--dtype float16] [--workers 4] [--stats-only]

Writes ``SEQ/spike_vox/NNNNNN.npy`` beside ``SEQ/spike/NNNNNN.dat`` for every frame of every split (in the release
layout under ``GOPRO_Large_spike_seq``, whose ``test`` split stands in for ``val``): the *un-normalised* log1p spike
counts, shape (K, spike H, spike W) at the sensor's resolution, float16 by default (half the disk and I/O of float32;
log1p counts are below ~6, where float16's relative error is 2**-11, far under the data's noise) or float32
with ``--dtype float32`` (bit-identical to voxelizing the ``.dat`` on the fly). Normalisation and the resize to
RGB happen at load time, so DATA.NORM.MEAN/STD can change without re-preparing. The mean and std over the
train split go to ``voxel_stats.json`` at the spike tree's root (``ROOT`` in the unified layout), computed from the
float32 values, before any float16 rounding.
Use the cache with ``DATA.USE_PRECOMPUTED_VOXELS: true``; ``--stats-only`` writes only the statistics.
"""
from __future__ import annotations

import argparse
import os
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from ds_deblur.errors import DatasetError

from .layout import Root, scan_split
from .roots import add_layout_arguments, layout_options, open_layout
from .voxel import VoxelStats, compute_stats, voxelize_dat


def _convert(job: tuple[Path, Optional[Path], tuple[int, int], int, str]) -> np.ndarray:
    """Voxelize one ``.dat`` into its cache file (written atomically; none when ``out`` is None) and return the
    float32 voxel."""
    dat, out, spike_size, k, dtype = job
    vox = voxelize_dat(dat, spike_size, k)
    if out is None:
        return vox
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, vox.astype(dtype))
    os.replace(tmp, out)
    return vox


def prepare(root: Root, k: int = 32, spike_size: Optional[Sequence[int]] = None,
            splits: Sequence[str] = ("train", "val"), stats_split: str = "train", dtype: str = "float16",
            workers: int = 0, cache: bool = True) -> VoxelStats:
    """Write the voxel cache for ``splits`` (unless ``cache`` is false) and ``voxel_stats.json`` from
    ``stats_split``; returns the stats. ``root`` is a dataset path or a ``roots.DataLayout``."""
    if stats_split not in splits:
        raise DatasetError(f"stats split '{stats_split}' is not among the prepared splits {list(splits)}")
    layout = open_layout(root)
    size = layout.spike_size(spike_size)
    per_split: dict[str, VoxelStats] = {}
    for split in splits:
        scan = scan_split(layout, split, size, k=k)
        scan.raise_if_bad()
        jobs = []
        for seq in scan.sequences:
            if cache:
                seq.voxel(0).parent.mkdir(exist_ok=True)
            jobs += [(seq.spike(i), seq.voxel(i) if cache else None, size, k, dtype) for i in range(len(seq.frames))]
        # Every split's stats are computed (cheap next to voxelizing) since the voxels pass by anyway.
        per_split[split] = compute_stats(_run(jobs, workers), k, split)
        done = "voxel files" if cache else "frames voxelized (no cache written)"
        print(f"[prepare] {scan.split}: {len(jobs)} {done} in {len(scan.sequences)} sequences")
    stats = per_split[stats_split]
    path = stats.save(layout.stats_dir)
    print(f"[prepare] voxel mean {stats.mean:.6f} std {stats.std:.6f} over {stats.frames} frames -> {path}")
    return stats


def _run(jobs: list, workers: int) -> Iterator[np.ndarray]:
    if workers <= 0:
        yield from map(_convert, jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap(_convert, jobs, chunksize=4)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ds-deblur prepare", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="dataset root: train/ and val/, or the release's GOPRO_Large*/ folders")
    parser.add_argument("--k", type=int, default=32, help="voxel bins (DATA.K)")
    parser.add_argument("--spike-size", type=int, nargs=2, metavar=("H", "W"),
                        help="spike sensor size (default: spike_size in ROOT/meta.yaml)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to cache")
    parser.add_argument("--stats-split", default="train", help="split the mean/std are computed over")
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="cache dtype")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0 = this process)")
    parser.add_argument("--stats-only", action="store_true",
                        help="write voxel_stats.json only, no cache (the cache takes 8x the .dat's disk at K=32)")
    add_layout_arguments(parser)
    args = parser.parse_args(argv)
    try:
        prepare(open_layout(args.root, layout_options(args)), args.k, args.spike_size, args.splits, args.stats_split,
                args.dtype, args.workers, cache=not args.stats_only)
    except DatasetError as err:
        print(f"[prepare] error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
