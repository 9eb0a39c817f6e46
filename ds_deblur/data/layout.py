"""Dataset layout on disk (DESIGN §4) and its validation.

``ROOT/{train,val}/SEQ/{blur,sharp}/NNNNNN.png``, ``SEQ/spike/NNNNNN.dat`` (the spike frames of that blurry
frame's exposure), optional cache ``SEQ/spike_vox/NNNNNN.npy``, and ``ROOT/meta.yaml`` (written by the
synthetic generator; for real data ``spike_size`` may live there or in ``DATA.SPIKE_SIZE``).

``scan_split`` collects every problem instead of stopping at the first, so that ``check`` can report them all
and a dataset can refuse to start with a message that names each bad sequence and file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import yaml
from PIL import Image

from .errors import DatasetError
from .spike_io import dat_frame_count

META_FILE = "meta.yaml"
SPIKE_DIR, VOXEL_DIR = "spike", "spike_vox"


@dataclass(frozen=True)
class SequenceInfo:
    """One validated sequence: its folder, frame stems in order and RGB size (H, W)."""
    name: str
    path: Path
    frames: tuple[str, ...]
    size: tuple[int, int]

    def blur(self, i: int) -> Path:
        return self.path / "blur" / f"{self.frames[i]}.png"

    def sharp(self, i: int) -> Path:
        return self.path / "sharp" / f"{self.frames[i]}.png"

    def spike(self, i: int) -> Path:
        return self.path / SPIKE_DIR / f"{self.frames[i]}.dat"

    def voxel(self, i: int) -> Path:
        return self.path / VOXEL_DIR / f"{self.frames[i]}.npy"


@dataclass
class SplitScan:
    """What ``scan_split`` found: the usable sequences, every problem, and per-frame spike frame counts."""
    split: str
    sequences: list[SequenceInfo]
    problems: list[str]
    spike_frames: list[int]

    def raise_if_bad(self) -> None:
        if self.problems:
            listing = "\n  - ".join(self.problems)
            raise DatasetError(f"{len(self.problems)} problem(s) in split '{self.split}':\n  - {listing}\n"
                               f"Fix these sequences or move them out of the split; "
                               f"`python -m ds_deblur.data.check ROOT` lists every problem of the dataset.")


def read_meta(root: os.PathLike) -> dict:
    """``ROOT/meta.yaml`` as a dict ({} when there is none)."""
    path = Path(root) / META_FILE
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def resolve_spike_size(root: os.PathLike, spike_size: Optional[Sequence[int]] = None) -> tuple[int, int]:
    """The spike sensor size: ``spike_size`` (DATA.SPIKE_SIZE) if given, else ``spike_size`` in meta.yaml."""
    if spike_size is None:
        spike_size = read_meta(root).get("spike_size")
    if spike_size is None:
        raise DatasetError(f"spike sensor size unknown for {root}: set DATA.SPIKE_SIZE: [H, W] (e.g. [250, 400] "
                           f"for the real camera, [360, 640] for GoPro-spike) or add spike_size to {root}/{META_FILE}")
    if len(spike_size) != 2 or min(spike_size) <= 0:
        raise DatasetError(f"spike size must be [H, W] with positive sizes, got {spike_size}")
    return int(spike_size[0]), int(spike_size[1])


def png_size(path: Path, verify: bool) -> tuple[int, int]:
    """(H, W) of a PNG from its header; ``verify`` also checks every chunk's CRC (reads the whole file).
    Raises OSError or ValueError (PIL's errors) when the file is not a readable PNG."""
    with Image.open(path) as img:
        if img.format != "PNG":
            raise ValueError(f"is a {img.format} file, not a PNG")
        width, height = img.size
        if verify:
            img.verify()
    return height, width


@dataclass(frozen=True)
class ScanRules:
    """What a split must satisfy (see ``scan_split``)."""
    spike_size: tuple[int, int]
    k: int
    min_frames: int = 1
    min_size: int = 0
    voxel_cache: bool = False
    verify_png: bool = False


def scan_split(root: os.PathLike, split: str, spike_size: Sequence[int], *, k: int, min_frames: int = 1,
               min_size: int = 0, voxel_cache: bool = False, verify_png: bool = False) -> SplitScan:
    """Validate ``root/split`` and index it. Checks: the split has sequences; each sequence has blur and sharp
    PNGs with the same names, all readable and of one size (at least ``min_size`` on each side); at least
    ``min_frames`` frames; a spike ``.dat`` (or with ``voxel_cache`` a ``.npy`` of shape (k, H, W)) per frame;
    ``.dat`` sizes a whole number of frames, at least ``k`` of them. PNGs are checked from their headers, or
    with ``verify_png`` also by their chunk CRCs (reads every file: slower, catches truncated files)."""
    rules = ScanRules((int(spike_size[0]), int(spike_size[1])), k, min_frames, min_size, voxel_cache, verify_png)
    split_dir = Path(root) / split
    scan = SplitScan(split, [], [], [])
    seq_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    if not seq_dirs:
        what = "has no sequence folders" if split_dir.is_dir() else "does not exist"
        scan.problems.append(f"{split_dir} {what} (empty split; expected {split_dir}/SEQ/{{blur,sharp,spike}})")
        return scan
    for seq_dir in seq_dirs:
        before = len(scan.problems)
        info = _scan_sequence(seq_dir, scan, rules)
        if info is not None and len(scan.problems) == before:
            scan.sequences.append(info)
    return scan


def _scan_sequence(seq_dir: Path, scan: SplitScan, rules: ScanRules) -> Optional[SequenceInfo]:
    label = f"{scan.split}/{seq_dir.name}"
    problems = scan.problems
    stems = {}
    for kind in ("blur", "sharp"):
        folder = seq_dir / kind
        stems[kind] = sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []
        if not stems[kind]:
            problems.append(f"{label}: no PNG frames in {folder}")
    if not stems["blur"] or not stems["sharp"]:
        return None
    if stems["blur"] != stems["sharp"]:
        problems.append(_mismatch(label, stems["blur"], stems["sharp"]))
        return None
    frames = tuple(stems["blur"])
    if len(frames) < rules.min_frames:
        problems.append(f"{label}: {len(frames)} frames, fewer than a clip of {rules.min_frames} (DATA.CLIP_LEN)")
    info = SequenceInfo(seq_dir.name, seq_dir, frames, (0, 0))
    size = _check_pngs(info, label, problems, rules.verify_png)
    if size is None:
        return None
    if min(size) < rules.min_size:
        problems.append(f"{label}: frames are {size[0]}x{size[1]}, smaller than the {rules.min_size}x"
                        f"{rules.min_size} training crop (DATA.CROP_SIZE)")
    for i in range(len(frames)):
        if rules.voxel_cache:
            _check_voxel(info.voxel(i), label, problems, (rules.k, *rules.spike_size))
        else:
            count = _check_dat(info.spike(i), label, problems, rules.spike_size, rules.k)
            if count is not None:
                scan.spike_frames.append(count)
    return SequenceInfo(seq_dir.name, seq_dir, frames, size)


def _mismatch(label: str, blur: list[str], sharp: list[str]) -> str:
    only_blur = sorted(set(blur) - set(sharp))
    only_sharp = sorted(set(sharp) - set(blur))
    parts = [f"{label}: blur has {len(blur)} frames, sharp has {len(sharp)}"]
    if only_blur:
        parts.append(f"missing in sharp: {', '.join(s + '.png' for s in only_blur[:5])}")
    if only_sharp:
        parts.append(f"missing in blur: {', '.join(s + '.png' for s in only_sharp[:5])}")
    return "; ".join(parts)


def _check_pngs(info: SequenceInfo, label: str, problems: list[str], verify: bool) -> Optional[tuple[int, int]]:
    """The common size of all blur/sharp PNGs of a sequence, recording unreadable or odd-sized ones."""
    ref: Optional[tuple[int, int]] = None
    ref_path = None
    ok = True
    for i in range(len(info.frames)):
        for path in (info.blur(i), info.sharp(i)):
            try:
                size = png_size(path, verify)
            except (OSError, ValueError, SyntaxError) as err:
                problems.append(f"{label}: unreadable PNG {path} ({err})")
                ok = False
                continue
            if ref is None:
                ref, ref_path = size, path
            elif size != ref:
                problems.append(f"{label}: {path} is {size[0]}x{size[1]} but {ref_path.name} is "
                                f"{ref[0]}x{ref[1]}; all frames of a sequence must have one size")
                ok = False
    return ref if ok else None


def _check_dat(path: Path, label: str, problems: list[str], spike_size: Sequence[int], k: int) -> Optional[int]:
    if not path.is_file():
        problems.append(f"{label}: missing spike file {path}")
        return None
    try:
        count = dat_frame_count(path, spike_size)
    except DatasetError as err:
        problems.append(f"{label}: {err}")
        return None
    if count < k:
        problems.append(f"{label}: {path} has {count} spike frames, fewer than K={k} voxel bins (DATA.K)")
    return count


def _check_voxel(path: Path, label: str, problems: list[str], shape: tuple[int, ...]) -> None:
    if not path.is_file():
        problems.append(f"{label}: missing voxel cache file {path} (run python -m ds_deblur.data.prepare ROOT)")
        return
    try:
        found = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError) as err:
        problems.append(f"{label}: unreadable voxel cache file {path} ({err})")
        return
    if found != shape:
        problems.append(f"{label}: voxel cache {path} has shape {found}, expected {shape} (K, spike H, spike W); "
                        f"rerun python -m ds_deblur.data.prepare ROOT --k {shape[0]}")
