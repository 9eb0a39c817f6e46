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

With ``--repr`` it writes S-VRT's spike artifacts instead (``representations``), the files its three preparation
scripts write for the same arguments, for each split's sequences, beside their ``spike/`` folder::

    ds-deblur prepare ROOT --repr tfp --num-bins 4 --half-win-length 20    # SEQ/tfp_b4_hw20/NNNNNN.npy
    ds-deblur prepare ROOT --repr raw_window --window-length 21            # SEQ/raw_window_l21/NNNNNN.npy
    ds-deblur prepare ROOT --repr encoding25 --dt 10 --subframes 4         # SEQ/encoding25_dt10_s4/NNNNNN.npy

uint8 by default (bool for encoding25, as S-VRT), ``--storage-dtype float32``; ``--format npz`` (tfp,
raw_window) or ``dat`` (encoding25, packed bits). Existing artifacts are kept unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import os
import sys
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np

from ds_deblur.errors import DatasetError

from .layout import Root, scan_split
from .representations import FORMATS, REPRS, SHORT_POLICIES, SpikeRepr, artifact_dir, artifact_path, write_artifact
from .roots import DataLayout, add_layout_arguments, layout_options, open_layout
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


def _run(jobs: list, workers: int, convert: Callable = _convert) -> Iterator:
    if workers <= 0:
        yield from map(convert, jobs)
        return
    with Pool(workers) as pool:
        yield from pool.imap(convert, jobs, chunksize=4)


def _write_representation(job: tuple[Path, Path, tuple[int, int], SpikeRepr, str]) -> None:
    dat, out, spike_size, spec, storage_dtype = job
    write_artifact(out, spec.encode(spec.from_dat(dat, spike_size), storage_dtype))


def prepare_representation(root: Root, spec: SpikeRepr, spike_size: Optional[Sequence[int]] = None,
                           splits: Sequence[str] = ("train", "val"), fmt: str = "npy",
                           storage_dtype: Optional[str] = None, workers: int = 0, overwrite: bool = False) -> int:
    """Write ``spec``'s artifact of every ``.dat`` in the spike folder of each sequence of ``splits`` (``val`` is
    the release's ``test``), S-VRT's folder and file names, dtype (default: S-VRT's) and format; existing ones
    are skipped unless ``overwrite``. Returns the number written."""
    storage_dtype = storage_dtype or spec.storage_dtypes[0]
    if fmt not in spec.formats or storage_dtype not in spec.storage_dtypes:
        raise DatasetError(f"{spec.name} artifacts are {' or '.join(spec.formats)} files of "
                           f"{' or '.join(spec.storage_dtypes)}, not {fmt} of {storage_dtype} (as S-VRT writes them)")
    layout = open_layout(root)
    size = layout.spike_size(spike_size)
    written = 0
    for split in splits:
        jobs, skipped = _representation_jobs(layout, split, spec, fmt, overwrite)
        for _ in _run([(dat, out, size, spec, storage_dtype) for dat, out in jobs], workers, _write_representation):
            pass
        written += len(jobs)
        print(f"[prepare] {layout.split_name(split)}: {len(jobs)} {spec.dir_name} artifacts written, "
              f"{skipped} already there")
    return written


def _representation_jobs(layout: DataLayout, split: str, spec: SpikeRepr, fmt: str,
                         overwrite: bool) -> tuple[list[tuple[Path, Path]], int]:
    """(``.dat``, artifact) of every spike stream of ``split`` still to write, and how many exist already."""
    seqs = layout.sequences(split)
    if not seqs:
        raise DatasetError(f"split '{split}' has no sequences in {layout.frames_dir(split)}; give the splits to "
                           f"prepare with --splits")
    jobs, skipped = [], 0
    for seq in seqs:
        dats = sorted((seq.spikes / layout.options.spike_dir).glob("*.dat"))
        if spec.name == "encoding25":  # S-VRT's script names these by frame number and skips other stems
            dats = [dat for dat in dats if dat.stem.isdigit()]
        if dats:
            artifact_dir(seq.spikes, spec).mkdir(exist_ok=True)
        for dat in dats:
            out = artifact_path(seq.spikes, spec, dat.stem, fmt)
            if out.exists() and not overwrite:
                skipped += 1
            else:
                jobs.append((dat, out))
    return jobs, skipped


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
    _add_representation_arguments(parser)
    add_layout_arguments(parser)
    args = parser.parse_args(argv)
    if args.repr is not None and args.stats_only:
        parser.error("--stats-only is for the voxel cache; leave out --repr")
    layout = open_layout(args.root, layout_options(args))
    try:
        if args.repr is None:
            prepare(layout, args.k, args.spike_size, args.splits, args.stats_split, args.dtype, args.workers,
                    cache=not args.stats_only)
        else:
            spec = SpikeRepr(args.repr, args.num_bins, args.half_win_length, args.window_length, args.dt,
                             args.subframes, args.short_policy)
            prepare_representation(layout, spec, args.spike_size, args.splits, args.format or spec.formats[0],
                                   args.storage_dtype, args.workers, args.overwrite)
    except DatasetError as err:
        print(f"[prepare] error: {err}", file=sys.stderr)
        return 1
    return 0


def _add_representation_arguments(parser: argparse.ArgumentParser) -> None:
    """S-VRT's preparation scripts' options, with their names and defaults."""
    group = parser.add_argument_group("S-VRT spike artifacts (instead of the voxel cache)")
    group.add_argument("--repr", choices=REPRS, help="write this representation's artifacts")
    group.add_argument("--num-bins", type=int, default=4, help="tfp: images per exposure (DATA.K)")
    group.add_argument("--half-win-length", type=int, default=20, help="tfp: DATA.TFP_HALF_WIN_LENGTH")
    group.add_argument("--window-length", type=int, default=9, help="raw_window: DATA.RAW_WINDOW_LENGTH (odd)")
    group.add_argument("--dt", type=int, default=10, help="encoding25: names the folder (DATA.FLOW_SPIKE_DT)")
    group.add_argument("--subframes", type=int, default=4, help="encoding25: windows per exposure "
                       "(DATA.FLOW_SPIKE_SUBFRAMES)")
    group.add_argument("--short-policy", choices=SHORT_POLICIES, default="pad_edge",
                       help="encoding25 with one window: a stream of under 25 frames is padded or refused")
    group.add_argument("--format", "--artifact-format", choices=FORMATS,
                       help="npy (default); npz for tfp and raw_window; dat (packed bits) for encoding25")
    group.add_argument("--storage-dtype", "--npy-dtype", choices=("uint8", "float32", "bool"),
                       help="on-disk dtype: uint8 (tfp, raw_window) or bool (encoding25) by default, or float32")
    group.add_argument("--overwrite", action="store_true", help="rewrite artifacts that exist")


if __name__ == "__main__":
    sys.exit(main())
