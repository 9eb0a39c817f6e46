"""Validate a whole dataset and print a summary.

    ds-deblur check ROOT [--spike-size H W] [--k 32] [--clip-len 5] [--crop-size 0]
                                        [--splits train val] [--voxel-cache] [--spike-root DIR]
                                        [--meta-info-file FILE] [--io-backend disk|lmdb]
    ds-deblur check --gt-root DIR --lq-root DIR --spike-root DIR [...]

ROOT is any layout of ``roots``: the unified layout, the GoPro spike release or S-VRT's (``ROOT/GOPRO_Large`` +
``ROOT/GOPRO_Large_spike_seq``, whose ``test`` split stands in for ``val``); or S-VRT's separate roots instead of
ROOT (``{split}`` in them stands for the split's name). Checks everything dataset construction checks
(``layout.scan_split``) and, unlike it, every PNG's chunk CRCs (PIL ``verify``: catches truncated or corrupted files
or LMDB values without decoding them). Exit status 0 when the dataset is usable, 1 when any problem was found (each
listed with its sequence and file, or LMDB and key), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Optional, Sequence

from ds_deblur.errors import DatasetError

from .layout import Root, SplitScan, scan_split
from .roots import add_layout_arguments, layout_options, open_layout
from .voxel import STATS_FILE


def check(root: Root, splits: Sequence[str], spike_size: Optional[Sequence[int]], k: int, clip_len: int,
          crop_size: int, voxel_cache: bool) -> list[str]:
    """Print the summary of ``root`` (a path or a ``roots.DataLayout``) and return every problem found."""
    layout = open_layout(root)
    print(f"dataset {layout.root} ({layout.describe()})")
    try:
        size = layout.spike_size(spike_size)
    except DatasetError as err:
        return [str(err)]
    scans, problems = [], []
    for split in splits:
        try:  # a split that cannot be read at all (a bad meta_info file, a broken LMDB) is one problem of many
            scans.append(scan_split(layout, split, size, k=k, min_frames=clip_len, voxel_cache=voxel_cache,
                                    verify_png=True, min_size=crop_size if split == splits[0] else 0))
        except DatasetError as err:
            problems.append(f"split '{split}': {err}")
    print(f"spike size {size[0]}x{size[1]}, K={k}, clip length {clip_len}"
          f"{', reading the voxel cache' if voxel_cache else ''}")
    print(f"{'split':<10}{'sequences':>10}{'frames':>8}  {'rgb sizes':<20}spike frames/exposure")
    for scan in scans:
        print(_row(scan))
    stats = layout.stats_dir / STATS_FILE
    print(f"{stats}: {'present' if stats.is_file() else 'missing (run ds-deblur prepare ROOT)'}")
    return problems + [problem for scan in scans for problem in scan.problems]


def _row(scan: SplitScan) -> str:
    frames = sum(len(seq.frames) for seq in scan.sequences)
    sizes = Counter(f"{seq.size[0]}x{seq.size[1]}" for seq in scan.sequences)
    size_text = ", ".join(sizes) or "-"
    spikes = f"{min(scan.spike_frames)}-{max(scan.spike_frames)}" if scan.spike_frames else "-"
    if spikes != "-" and min(scan.spike_frames) == max(scan.spike_frames):
        spikes = str(scan.spike_frames[0])
    return f"{scan.split:<10}{len(scan.sequences):>10}{frames:>8}  {size_text:<20}{spikes}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ds-deblur check", description=__doc__.split("\n\n")[0])
    parser.add_argument("root", nargs="?", help="dataset root: train/ and val/, or GoPro's GOPRO_Large*/ folders "
                        "(none with --gt-root and --lq-root)")
    parser.add_argument("--spike-size", type=int, nargs=2, metavar=("H", "W"),
                        help="spike sensor size (default: spike_size in ROOT/meta.yaml)")
    parser.add_argument("--k", type=int, default=32, help="voxel bins: each .dat needs at least K frames")
    parser.add_argument("--clip-len", type=int, default=5, help="each sequence needs at least this many frames")
    parser.add_argument("--crop-size", type=int, default=0, help="training frames must be at least this big")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], help="splits to check (first = training)")
    parser.add_argument("--voxel-cache", action="store_true", help="check SEQ/spike_vox/*.npy instead of .dat")
    add_layout_arguments(parser)
    args = parser.parse_args(argv)
    if args.root is None and not (args.gt_root and args.lq_root and args.spike_root):
        parser.error("give the dataset ROOT, or --gt-root, --lq-root and --spike-root")
    try:
        layout = open_layout(args.root, layout_options(args))
    except DatasetError as err:
        parser.error(str(err))
    problems = check(layout, args.splits, args.spike_size, args.k, args.clip_len, args.crop_size, args.voxel_cache)
    if problems:
        listing = "\n  - ".join(problems)
        print(f"{len(problems)} problem(s) found:\n  - {listing}")
        return 1
    print("no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
