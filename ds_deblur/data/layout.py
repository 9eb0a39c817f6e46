"""A dataset's sequences on disk (docs/data.md) and their validation.

Each sequence has ``blur/`` and ``sharp/`` frames (``DATA.IMAGE_EXTS``, PNG by default) and, per frame, the spike
stream of its exposure ``spike/STEM.dat`` (optional cache ``spike_vox/STEM.npy``), paired by file stem: the
original trainer's ``NNNNNN`` or GoPro's own frame numbers, which need not start at 0 or 1. Where the frames and
the spike folders live (the unified layout, the GoPro spike release, S-VRT's layout or its separate roots; frames
in files or in KAIR LMDBs) is ``roots.DataLayout``'s business; a meta_info file limits a sequence to the frame
numbers it lists.

``scan_split`` collects every problem instead of stopping at the first, so that ``check`` can report them all
and a dataset can refuse to start with a message that names each bad sequence and file.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ds_deblur.errors import DatasetError

from .frame_store import FrameFolder, FrameRef, frame_format, open_frame
from .roots import META_FILE, DataLayout, LayoutOptions, SequenceDirs, open_layout, read_meta
from .spike_io import dat_frame_count

SPIKE_DIR, VOXEL_DIR = LayoutOptions.spike_dir, LayoutOptions.voxel_dir
Root = Union[str, os.PathLike, DataLayout]

__all__ = ["META_FILE", "SPIKE_DIR", "VOXEL_DIR", "ScanRules", "SequenceInfo", "SplitScan", "frame_files",
           "read_meta", "resolve_spike_size", "scan_split"]


@dataclass(frozen=True)
class SequenceInfo:
    """One validated sequence: its name, frames folder, frame stems in order, RGB size (H, W), the file names of
    its blur and sharp frames (LMDB: their stems), and its folder in the spike tree with the spike and voxel cache
    folder names. The blur and sharp frames are in ``path/blur`` and ``path/sharp`` unless ``blur_dir`` and
    ``sharp_dir`` say otherwise (S-VRT's layouts: two frame trees, or LMDB clips)."""
    name: str
    path: Path
    frames: tuple[str, ...]
    size: tuple[int, int]
    blur_files: tuple[str, ...]
    sharp_files: tuple[str, ...]
    spike_path: Path
    spike_dir: str = SPIKE_DIR
    voxel_dir: str = VOXEL_DIR
    blur_dir: Optional[FrameFolder] = field(default=None, kw_only=True)
    sharp_dir: Optional[FrameFolder] = field(default=None, kw_only=True)

    def blur(self, i: int) -> FrameRef:
        return (self.path / "blur" if self.blur_dir is None else self.blur_dir) / self.blur_files[i]

    def sharp(self, i: int) -> FrameRef:
        return (self.path / "sharp" if self.sharp_dir is None else self.sharp_dir) / self.sharp_files[i]

    def spike(self, i: int) -> Path:
        return self.spike_path / self.spike_dir / f"{self.frames[i]}.dat"

    def voxel(self, i: int) -> Path:
        return self.spike_path / self.voxel_dir / f"{self.frames[i]}.npy"


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
                               f"`ds-deblur check ROOT` lists every problem of the dataset.")


def resolve_spike_size(root: Root, spike_size: Optional[Sequence[int]] = None) -> tuple[int, int]:
    """The spike sensor size: ``spike_size`` (DATA.SPIKE_SIZE) if given, else what the dataset records
    (``meta.yaml``'s spike_size, or the release's ``config.yaml`` spike_h/spike_w)."""
    return open_layout(root).spike_size(spike_size)


def frame_order(stem: str) -> tuple:
    """Sort key of frame stems: numbers by value (``9`` before ``10`` even without zero padding), then names."""
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


def frame_files(folder: FrameFolder, exts: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """{stem: file name} of the frames in ``folder`` with one of ``exts`` (case-insensitive), in frame order, and
    the names of files whose stem another frame file already has (``000001.png`` beside ``000001.jpg``). An LMDB
    clip's frames are its keys' stems (``{stem: stem}``; keys have no extension)."""
    if not isinstance(folder, Path):
        return {stem: stem for stem in sorted(folder.stems(), key=frame_order)}, []
    files: dict[str, str] = {}
    clashes = []
    wanted = {e.lower() for e in exts}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix.lower() in wanted and path.is_file():
            if path.stem in files:
                clashes.append(path.name)
            else:
                files[path.stem] = path.name
    return {stem: files[stem] for stem in sorted(files, key=frame_order)}, clashes


def image_size(frame: FrameRef, verify: bool) -> tuple[int, int]:
    """(H, W) of a frame (a file, or an LMDB frame) from its header; ``verify`` also checks its integrity (PNG:
    every chunk's CRC; reads the whole file). Raises OSError or ValueError (PIL's errors; DatasetError for an LMDB
    frame that cannot be read) when it is not a readable image of the format it must have (``frame_format``)."""
    with open_frame(frame) as img:
        expected = frame_format(frame)
        if expected and img.format != expected:
            raise ValueError(f"is a {img.format} image, not a {expected}")
        width, height = img.size
        if verify:
            img.verify()
    return height, width


def file_kind(frame: FrameRef) -> str:
    """What a frame is called in messages: ``PNG`` for ``.png`` and LMDB frames (the usual case), ``image``
    otherwise."""
    return frame_format(frame) or "image"


@dataclass(frozen=True)
class ScanRules:
    """What a split must satisfy (see ``scan_split``)."""
    spike_size: tuple[int, int]
    k: int
    min_frames: int = 1
    min_size: int = 0
    voxel_cache: bool = False
    verify_png: bool = False


def scan_split(root: Root, split: str, spike_size: Sequence[int], *, k: int, min_frames: int = 1,
               min_size: int = 0, voxel_cache: bool = False, verify_png: bool = False) -> SplitScan:
    """Validate ``split`` of the dataset at ``root`` (a path, or a ``DataLayout`` for the other layouts and
    named folders) and index it. Checks: the split has sequences; each sequence has blur and sharp frames with the
    same stems (with a meta_info file: every frame it lists), all readable and of one size (at least ``min_size``
    on each side); at least ``min_frames`` frames; a spike ``.dat`` (or with ``voxel_cache`` a ``.npy`` of shape
    (k, H, W)) per frame; ``.dat`` sizes a whole number of frames, at least ``k`` of them. Frames are checked from
    their headers, or with ``verify_png`` also by their integrity (PNG chunk CRCs: reads every file, slower, catches
    truncated files)."""
    layout = open_layout(root)
    rules = ScanRules((int(spike_size[0]), int(spike_size[1])), k, min_frames, min_size, voxel_cache, verify_png)
    split_dir = layout.frames_dir(split)
    scan = SplitScan(layout.split_name(split), [], [], [])
    seqs = layout.sequences(split)
    if not seqs:
        what = "has no sequence folders" if split_dir.is_dir() else "does not exist"
        scan.problems.append(f"{split_dir} {what} (empty split; expected {layout.expected(split)})")
        return scan
    for seq in seqs:
        before = len(scan.problems)
        info = _scan_sequence(seq, scan, rules, layout.options)
        if info is not None and len(scan.problems) == before:
            scan.sequences.append(info)
    return scan


def _scan_sequence(seq: SequenceDirs, scan: SplitScan, rules: ScanRules,
                   options: LayoutOptions) -> Optional[SequenceInfo]:
    label = f"{scan.split}/{seq.name}"
    problems = scan.problems
    files = {kind: _sequence_frames(seq, folder, label, problems, options.image_exts)
             for kind, folder in (("blur", seq.blur), ("sharp", seq.sharp))}
    if not files["blur"] or not files["sharp"]:
        return None
    if files["blur"].keys() != files["sharp"].keys():
        problems.append(_mismatch(label, files["blur"], files["sharp"], seq))
        return None
    frames = tuple(files["blur"])
    if len(frames) < rules.min_frames:
        problems.append(f"{label}: {len(frames)} frames, fewer than a clip of {rules.min_frames} (DATA.CLIP_LEN)")
    info = SequenceInfo(seq.name, seq.frames, frames, (0, 0), tuple(files["blur"].values()),
                        tuple(files["sharp"].values()), seq.spikes, options.spike_dir, options.voxel_dir,
                        blur_dir=seq.blur, sharp_dir=seq.sharp)
    size = _check_images(info, label, problems, rules.verify_png)
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
    return replace(info, size=size)


def _sequence_frames(seq: SequenceDirs, folder: FrameFolder, label: str, problems: list[str],
                     exts: Sequence[str]) -> dict[str, str]:
    """{stem: file name} of the frames of ``seq`` in ``folder`` (its blur or sharp frames), only those its
    meta_info file lists when it has one; records what is wrong with them."""
    found, clashes = frame_files(folder, exts)
    if clashes:
        problems.append(f"{label}: {', '.join(clashes[:5])} in {folder} share their stem with another frame "
                        f"file; keep one file per frame")
    if not found:
        what = "/".join(exts) if isinstance(folder, Path) else "LMDB keys"
        listed = f" (listed in {seq.listed_in})" if seq.listed is not None else ""
        problems.append(f"{label}: no frames ({what}) in {folder}{listed}")
    elif seq.listed is not None:
        found = _only_listed(found, seq, folder, label, problems)
    return found


def _only_listed(files: dict[str, str], seq: SequenceDirs, folder: FrameFolder, label: str,
                 problems: list[str]) -> dict[str, str]:
    """The frames of ``files`` whose stem's number the meta_info file lists for ``seq`` (in order), recording the
    listed numbers no frame has."""
    by_number = {int(stem): stem for stem in files if stem.isdigit()}
    missing = [n for n in seq.listed if n not in by_number]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        problems.append(f"{label}: {seq.listed_in} lists frames {seq.listed.start}-{seq.listed.stop - 1}, but "
                        f"{folder} has no frame {missing[0]}{more}")
    return {by_number[n]: files[by_number[n]] for n in seq.listed if n in by_number}


def _mismatch(label: str, blur: dict[str, str], sharp: dict[str, str], seq: SequenceDirs) -> str:
    """The frames only one of blur and sharp has, each side named with its folder (or LMDB)."""
    parts = [f"{label}: blur has {len(blur)} frames, sharp has {len(sharp)}"]
    for kind, present, other, folder in (("sharp", blur, sharp, seq.sharp), ("blur", sharp, blur, seq.blur)):
        missing = sorted(set(present) - set(other), key=frame_order)
        if missing:
            parts.append(f"missing in {kind}: {', '.join(present[s] for s in missing[:5])} (not in {folder})")
    return "; ".join(parts)


def _check_images(info: SequenceInfo, label: str, problems: list[str], verify: bool) -> Optional[tuple[int, int]]:
    """The common size of all blur/sharp frames of a sequence, recording unreadable or odd-sized ones."""
    ref: Optional[tuple[int, int]] = None
    ref_path: Optional[FrameRef] = None
    ok = True
    for i in range(len(info.frames)):
        for path in (info.blur(i), info.sharp(i)):
            try:
                size = image_size(path, verify)
            except (OSError, ValueError, SyntaxError) as err:
                problems.append(f"{label}: unreadable {file_kind(path)} {path} ({err})")
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
        problems.append(f"{label}: missing voxel cache file {path} (run ds-deblur prepare ROOT)")
        return
    try:
        found = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError) as err:
        problems.append(f"{label}: unreadable voxel cache file {path} ({err})")
        return
    if found != shape:
        problems.append(f"{label}: voxel cache {path} has shape {found}, expected {shape} (K, spike H, spike W); "
                        f"rerun ds-deblur prepare ROOT --k {shape[0]}")
