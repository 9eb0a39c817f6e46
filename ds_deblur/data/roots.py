"""Where a dataset's frames and spike streams live (docs/data.md): two layouts, one interface.

Unified (the original trainer's): ``ROOT/SPLIT/SEQ/{blur,sharp,spike}``, the card ``ROOT/meta.yaml``.
Release (the GoPro spike dataset as downloaded), recognised by its two folders::

    ROOT/GOPRO_Large/{train,test}/SEQ/{blur,sharp}/NNNNNN.png
    ROOT/GOPRO_Large_spike_seq/{train,test}/SEQ/spike/NNNNNN.dat
    ROOT/GOPRO_Large_spike_seq/config.yaml          spike_h, spike_w

``DATA.SPIKE_ROOT`` moves the spike tree anywhere (its own ``SPLIT/SEQ/spike`` and ``config.yaml``), in either
layout. The voxel cache goes beside the spike files (``SEQ/spike_vox`` in the spike tree) and ``voxel_stats.json``
at the spike tree's root. The release has no ``val`` split (GoPro validates on ``test``): ``val``, when it does not
exist and ``test`` does, is read as ``test``, so ``DATA.VAL_SPLIT: val`` works unchanged on both layouts.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ds_deblur.errors import DatasetError

META_FILE = "meta.yaml"
RELEASE_FRAMES, RELEASE_SPIKES, RELEASE_CONFIG = "GOPRO_Large", "GOPRO_Large_spike_seq", "config.yaml"
VAL_SPLIT, VALIDATION_SPLIT = "val", "test"  # our name of the validation split, and the release's


@dataclass(frozen=True)
class LayoutOptions:
    """How a dataset names its parts: DATA.SPIKE_ROOT, SPIKE_DIR, VOXEL_CACHE_DIRNAME, IMAGE_EXTS."""
    spike_root: Optional[str] = None
    spike_dir: str = "spike"
    voxel_dir: str = "spike_vox"
    image_exts: tuple[str, ...] = (".png",)

    @classmethod
    def from_config(cls, data: Any) -> "LayoutOptions":
        """From a config's DATA section."""
        return cls(data.SPIKE_ROOT, data.SPIKE_DIR, data.VOXEL_CACHE_DIRNAME, tuple(data.IMAGE_EXTS))


@dataclass(frozen=True)
class SequenceDirs:
    """One sequence: its frames folder (``blur/``, ``sharp/``) and its spike folder (``spike/``, ``spike_vox/``)."""
    name: str
    frames: Path
    spikes: Path


@dataclass(frozen=True)
class DataLayout:
    """A resolved dataset: ``frames_root/SPLIT/SEQ/{blur,sharp}`` and ``spike_root/SPLIT/SEQ/{spike,spike_vox}``."""
    root: Path
    release: bool
    frames_root: Path
    spike_root: Path
    options: LayoutOptions = field(default_factory=LayoutOptions)

    def describe(self) -> str:
        kind = "GoPro spike release" if self.release else "unified layout"
        return f"{kind}: frames in {self.frames_root}, spike streams in {self.spike_root}"

    def split_name(self, split: str) -> str:
        """The folder of ``split``: itself, or for ``val`` the release's ``test`` when only that exists."""
        missing = not (self.frames_root / split).is_dir()
        if split == VAL_SPLIT and missing and (self.frames_root / VALIDATION_SPLIT).is_dir():
            return VALIDATION_SPLIT
        return split

    def frames_dir(self, split: str) -> Path:
        return self.frames_root / self.split_name(split)

    def spikes_dir(self, split: str) -> Path:
        return self.spike_root / self.split_name(split)

    def sequences(self, split: str) -> list[SequenceDirs]:
        """The sequence folders of ``split`` in the frames tree (sorted), each with its spike folder."""
        folder = self.frames_dir(split)
        seqs = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        return [SequenceDirs(name, folder / name, self.spikes_dir(split) / name) for name in seqs]

    @property
    def stats_dir(self) -> Path:
        """Where ``voxel_stats.json`` lives: the spike tree's root (``ROOT`` in the unified layout)."""
        return self.spike_root

    def spike_size(self, given: Optional[Sequence[int]] = None) -> tuple[int, int]:
        """The spike sensor size: ``given`` (DATA.SPIKE_SIZE), else what the dataset's files say."""
        if not self.root.is_dir():
            raise DatasetError(f"dataset root {self.root} is not a folder (DATA.ROOT): give the folder holding "
                               f"train/ and val/, or the release's GOPRO_Large/ and GOPRO_Large_spike_seq/")
        size = given if given is not None else self.recorded_spike_size()
        if size is None:
            raise DatasetError(
                f"spike sensor size unknown for {self.root}: set DATA.SPIKE_SIZE: [H, W] (e.g. [250, 400] for the "
                f"real camera, [360, 640] for GoPro-spike), add spike_size: [H, W] to {self.root / META_FILE}, or "
                f"spike_h/spike_w to {self.spike_root / RELEASE_CONFIG} as the release has")
        if len(size) != 2 or min(size) <= 0:
            raise DatasetError(f"spike size must be [H, W] with positive sizes, got {list(size)}")
        return int(size[0]), int(size[1])

    def recorded_spike_size(self) -> Optional[tuple[int, int]]:
        """The sensor size the dataset's files record, or None. The release's ``config.yaml`` (spike_h, spike_w)
        and ``meta.yaml`` (spike_size) must agree when both have it."""
        found = {}
        release = _read_yaml(self.spike_root / RELEASE_CONFIG)
        if "spike_h" in release and "spike_w" in release:
            found[self.spike_root / RELEASE_CONFIG] = (release["spike_h"], release["spike_w"])
        meta = read_meta(self.root).get("spike_size")
        if meta is not None:
            found[self.root / META_FILE] = tuple(meta)
        sizes = {tuple(int(v) for v in size) for size in found.values()}
        if len(sizes) > 1:
            listing = ", ".join(f"{path} says {list(size)}" for path, size in found.items())
            raise DatasetError(f"the dataset's files disagree on the spike sensor size: {listing}; fix one "
                               f"(or set DATA.SPIKE_SIZE)")
        return sizes.pop() if sizes else None


def open_layout(root: os.PathLike | str | DataLayout, options: LayoutOptions = LayoutOptions()) -> DataLayout:
    """The layout of ``root``: the release when ``ROOT/GOPRO_Large`` exists, the unified layout otherwise.
    A ``DataLayout`` is returned as it is. Nothing is validated here (``layout.scan_split`` does that)."""
    if isinstance(root, DataLayout):
        return root
    root = Path(root)
    release = (root / RELEASE_FRAMES).is_dir()
    frames = root / RELEASE_FRAMES if release else root
    default_spikes = root / RELEASE_SPIKES if release else root
    spikes = Path(options.spike_root) if options.spike_root else default_spikes
    return DataLayout(root, release, frames, spikes, options)


def sequence_dirs_of(seq_dir: Path, options: LayoutOptions = LayoutOptions()) -> tuple[SequenceDirs, DataLayout]:
    """A sequence folder given on its own (``SPLIT/SEQ`` of some dataset) and the dataset it sits in: its spike
    folder is the same ``SPLIT/SEQ`` in that dataset's spike tree, i.e. ``SEQ`` itself in the unified layout
    without DATA.SPIKE_ROOT, and ``GOPRO_Large_spike_seq/SPLIT/SEQ`` for a sequence of the release."""
    seq_dir = Path(seq_dir).resolve()
    split, frames_root = seq_dir.parent.name, seq_dir.parent.parent
    if frames_root.name == RELEASE_FRAMES:
        layout = open_layout(frames_root.parent, options)
    else:  # whatever folders sit beside it: a sequence outside GOPRO_Large is in the unified layout
        layout = DataLayout(frames_root, False, frames_root, Path(options.spike_root or frames_root), options)
    return SequenceDirs(seq_dir.name, seq_dir, layout.spike_root / split / seq_dir.name), layout


def read_meta(root: os.PathLike) -> dict:
    """``ROOT/meta.yaml`` as a dict ({} when there is none)."""
    return _read_yaml(Path(root) / META_FILE)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DatasetError(f"{path} is not valid YAML ({err}); fix or remove it") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def add_layout_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line twins of DATA.SPIKE_ROOT, SPIKE_DIR, VOXEL_CACHE_DIRNAME and IMAGE_EXTS."""
    defaults = LayoutOptions()
    parser.add_argument("--spike-root", help="separate spike tree SPLIT/SEQ/spike (DATA.SPIKE_ROOT; default: the one "
                        "in ROOT, or ROOT/GOPRO_Large_spike_seq for the release)")
    parser.add_argument("--spike-dir", default=defaults.spike_dir, help="spike folder of a sequence (DATA.SPIKE_DIR)")
    parser.add_argument("--voxel-dir", default=defaults.voxel_dir,
                        help="voxel cache folder of a sequence (DATA.VOXEL_CACHE_DIRNAME)")
    parser.add_argument("--image-exts", nargs="+", default=list(defaults.image_exts),
                        help="frame file extensions that count (DATA.IMAGE_EXTS)")


def layout_options(args: argparse.Namespace) -> LayoutOptions:
    """``LayoutOptions`` from the arguments ``add_layout_arguments`` added."""
    exts = tuple(e if e.startswith(".") else f".{e}" for e in args.image_exts)
    return LayoutOptions(args.spike_root, args.spike_dir, args.voxel_dir, exts)
