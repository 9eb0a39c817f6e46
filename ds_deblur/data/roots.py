"""Where a dataset's frames and spike streams live (docs/data.md): four layouts, one interface.

Unified (the original trainer's): ``ROOT/SPLIT/SEQ/{blur,sharp,spike}``, the card ``ROOT/meta.yaml``.
Release (the GoPro spike dataset as downloaded), recognised by its two folders::

    ROOT/GOPRO_Large/{train,test}/SEQ/{blur,sharp}/NNNNNN.png
    ROOT/GOPRO_Large_spike_seq/{train,test}/SEQ/spike/NNNNNN.dat
    ROOT/GOPRO_Large_spike_seq/config.yaml          spike_h, spike_w

S-VRT's (its README's), recognised by ``GOPRO_Large/*_GT`` (or ``*_GT.lmdb``), with the same spike tree::

    ROOT/GOPRO_Large/{train,test}_GT/SEQ/NNNNNN.png            sharp frames
    ROOT/GOPRO_Large/{train,test}_GT_blurred/SEQ/NNNNNN.png    blurry frames

Separate roots (S-VRT's dataroot_gt, dataroot_lq, dataroot_spike): ``DATA.GT_ROOT`` and ``DATA.LQ_ROOT`` are a
split's sharp and blurry frame folders (``SEQ/NNNNNN.png``) and ``DATA.SPIKE_ROOT`` its spike folder
(``SEQ/spike/NNNNNN.dat``); ``{split}`` in them stands for the split's name, so that one config names both splits
(``/data/GOPRO_Large/{split}_GT``). With ``DATA.IO_BACKEND: lmdb`` the frames of S-VRT's two layouts come from KAIR
LMDBs, each frame root with ``.lmdb`` after it (``frame_store``). ``DATA.META_INFO_FILE`` (``meta_info``) limits a
split to the sequences and frames it lists: the training split's (DATA.TRAIN_SPLIT), or each split's when its path
holds ``{split}``.

``DATA.SPIKE_ROOT`` moves the spike tree anywhere in every layout: a folder of split folders ``SPLIT/SEQ/spike``
(with ``config.yaml``), or, like S-VRT's dataroot_spike, a split's own folder ``SEQ/spike`` (written with
``{split}``, or found so when it holds no folder of the split's name). The voxel cache goes beside the spike files
(``SEQ/spike_vox`` in the spike tree) and ``voxel_stats.json`` at the spike tree's root (the folder above
``{split}``). GoPro has no ``val`` split (it validates on ``test``): ``val``, when it does not exist and ``test``
does, is read as ``test``, so ``DATA.VAL_SPLIT: val`` works unchanged on every layout.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ds_deblur.errors import DatasetError

from .frame_store import FrameFolder, LmdbClip, clips_in, lmdb_path
from .meta_info import read_meta_info

META_FILE = "meta.yaml"
RELEASE_FRAMES, RELEASE_SPIKES, RELEASE_CONFIG = "GOPRO_Large", "GOPRO_Large_spike_seq", "config.yaml"
VAL_SPLIT, VALIDATION_SPLIT = "val", "test"  # our name of the validation split, and GoPro's
SPLIT_FIELD = "{split}"  # in a root's path: the split's name
SVRT_SHARP, SVRT_BLUR = "{split}_GT", "{split}_GT_blurred"  # S-VRT's frame folders in GOPRO_Large
UNIFIED, RELEASE, SVRT, ROOTS = "unified", "release", "svrt", "roots"
IO_BACKENDS = ("disk", "lmdb")
KIND_TEXT = {UNIFIED: "unified layout", RELEASE: "GoPro spike release", SVRT: "S-VRT's GoPro layout",
             ROOTS: "S-VRT's separate roots"}


@dataclass(frozen=True)
class LayoutOptions:
    """How a dataset names its parts: DATA.SPIKE_ROOT, SPIKE_DIR, VOXEL_CACHE_DIRNAME, IMAGE_EXTS, GT_ROOT, LQ_ROOT,
    META_INFO_FILE (applied to ``meta_info_split``, DATA.TRAIN_SPLIT, unless it names ``{split}``), IO_BACKEND."""
    spike_root: Optional[str] = None
    spike_dir: str = "spike"
    voxel_dir: str = "spike_vox"
    image_exts: tuple[str, ...] = (".png",)
    gt_root: Optional[str] = None
    lq_root: Optional[str] = None
    meta_info_file: Optional[str] = None
    meta_info_split: str = "train"
    io_backend: str = "disk"

    @classmethod
    def from_config(cls, data: Any) -> "LayoutOptions":
        """From a config's DATA section."""
        return cls(spike_root=data.SPIKE_ROOT, spike_dir=data.SPIKE_DIR, voxel_dir=data.VOXEL_CACHE_DIRNAME,
                   image_exts=tuple(data.IMAGE_EXTS), gt_root=data.GT_ROOT, lq_root=data.LQ_ROOT,
                   meta_info_file=data.META_INFO_FILE, meta_info_split=data.TRAIN_SPLIT,
                   io_backend=data.IO_BACKEND)

    @property
    def lmdb(self) -> bool:
        return self.io_backend == "lmdb"


@dataclass(frozen=True)
class SequenceDirs:
    """One sequence: its folder in the frames tree (S-VRT's layouts: its blurry frames' folder), its spike folder
    (``spike/``, ``spike_vox/``), where its blurry and sharp frames are (default ``frames/blur``, ``frames/sharp``;
    a clip of an LMDB with IO_BACKEND lmdb) and, with a meta_info file, the frame numbers it lists there."""
    name: str
    frames: Path
    spikes: Path
    blur: Optional[FrameFolder] = field(default=None, kw_only=True)
    sharp: Optional[FrameFolder] = field(default=None, kw_only=True)
    listed: Optional[range] = field(default=None, kw_only=True)
    listed_in: Optional[Path] = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        # frozen: the defaults derived from ``frames`` are set the way dataclasses set fields
        if self.blur is None:
            object.__setattr__(self, "blur", self.frames / "blur")
        if self.sharp is None:
            object.__setattr__(self, "sharp", self.frames / "sharp")


@dataclass(frozen=True)
class DataLayout:
    """A resolved dataset. ``blur_split``, ``sharp_split`` and ``spike_split`` are the folders of a split's
    sequences (``{split}`` standing for its name); a sequence's blurry and sharp frames are in ``SEQ/<subdir>``
    there (``frame_subdirs``: ``blur``/``sharp`` in our layouts, the sequence folder itself in S-VRT's) and its
    spike streams in ``SEQ/spike``. ``spike_root`` holds ``config.yaml`` and ``voxel_stats.json``."""
    root: Path
    kind: str
    spike_root: Path
    blur_split: str
    sharp_split: str
    spike_split: str
    options: LayoutOptions = field(default_factory=LayoutOptions)
    frame_subdirs: tuple[str, str] = ("blur", "sharp")

    @property
    def release(self) -> bool:
        return self.kind == RELEASE

    @property
    def lmdb(self) -> bool:
        """Frames come from KAIR LMDBs (only S-VRT's layouts have them)."""
        return self.options.lmdb and self.kind in (SVRT, ROOTS)

    def describe(self) -> str:
        blur, sharp = self.frame_subdirs
        if blur:
            frames = f"frames in {self.blur_split}/SEQ/{{{blur},{sharp}}}"
        elif self.lmdb:
            frames = (f"blurry frames in the LMDB {lmdb_path(self.blur_split)}, sharp in {lmdb_path(self.sharp_split)}"
                      f" (keys SEQ/NNNNNN)")
        else:
            frames = f"blurry frames in {self.blur_split}/SEQ, sharp in {self.sharp_split}/SEQ"
        return f"{KIND_TEXT[self.kind]}: {frames}, spike streams in {self.spike_split}/SEQ/{self.options.spike_dir}"

    def split_name(self, split: str) -> str:
        """The folder name of ``split``: itself, or for ``val`` GoPro's ``test`` when only that exists."""
        if split == VAL_SPLIT and not self._split_exists(split) and self._split_exists(VALIDATION_SPLIT):
            return VALIDATION_SPLIT
        return split

    def _split_exists(self, split: str) -> bool:
        return self._frame_folder(self.blur_split, split).exists()

    def _frame_folder(self, template: str, name: str) -> Path:
        folder = fill_split(template, name)
        return lmdb_path(folder) if self.lmdb else folder

    def frames_dir(self, split: str) -> Path:
        """The folder of ``split``'s sequences (of their blurry frames in S-VRT's layouts; an LMDB there)."""
        return self._frame_folder(self.blur_split, self.split_name(split))

    def spikes_dir(self, split: str) -> Path:
        """The folder of ``split``'s spike folders; a SPIKE_ROOT with no folder of the split's name is taken as
        the split's own folder, as S-VRT's dataroot_spike is."""
        folder = fill_split(self.spike_split, self.split_name(split))
        given = self.options.spike_root
        if given and SPLIT_FIELD not in given and not folder.is_dir() and self._holds_spikes(Path(given)):
            return Path(given)
        return folder

    def _holds_spikes(self, folder: Path) -> bool:
        """``folder`` holds sequence folders with their spike folder: it is a split's own spike folder."""
        return folder.is_dir() and any((p / self.options.spike_dir).is_dir() for p in folder.iterdir())

    def expected(self, split: str) -> str:
        """What ``split`` should hold, for messages."""
        blur, sharp = self.frame_subdirs
        name = self.split_name(split)
        spikes = f"{self.spikes_dir(split)}/SEQ/{self.options.spike_dir}"
        if blur:
            return f"{self.frames_dir(split)}/SEQ/{{{blur},{sharp}}} with {spikes}"
        kind = "LMDB keys SEQ/NNNNNN" if self.lmdb else "SEQ/NNNNNN.png"
        found = lmdb_path(self.frames_dir(split))
        hint = (f"; {found} exists: read it with DATA.IO_BACKEND lmdb (--io-backend lmdb)"
                if not self.lmdb and found.is_dir() else "")
        return (f"{kind} in {self.frames_dir(split)} (blurry) and {self._frame_folder(self.sharp_split, name)} "
                f"(sharp), with {spikes}{hint}")

    def sequences(self, split: str) -> list[SequenceDirs]:
        """The sequences of ``split`` (sorted): the sequence folders of its frames, or those its meta_info file
        lists; each with its frame folders and spike folder."""
        name = self.split_name(split)
        blur_root = self._frame_folder(self.blur_split, name)
        sharp_root = self._frame_folder(self.sharp_split, name)
        listed_in = self.meta_info_file(split)
        listed = read_meta_info(listed_in) if listed_in is not None else None
        names = sorted(listed) if listed is not None else sorted(self._names(blur_root) | self._names(sharp_root))
        spikes = self.spikes_dir(split)
        blur_sub, sharp_sub = self.frame_subdirs
        seqs = []
        for seq in names:
            if self.lmdb:
                blur, sharp = LmdbClip(blur_root, seq), LmdbClip(sharp_root, seq)
            else:
                blur, sharp = blur_root / seq / blur_sub, sharp_root / seq / sharp_sub
            seqs.append(SequenceDirs(seq, blur_root / seq, spikes / seq, blur=blur, sharp=sharp,
                                     listed=listed[seq] if listed is not None else None, listed_in=listed_in))
        return seqs

    def _names(self, folder: Path) -> set[str]:
        """The sequences in a split's frame folder: its sub-folders, or the clips of its LMDB's keys."""
        if self.lmdb:
            return set(clips_in(folder)) if folder.is_dir() else set()
        return {p.name for p in folder.iterdir() if p.is_dir()} if folder.is_dir() else set()

    def meta_info_file(self, split: str) -> Optional[Path]:
        """The meta_info file that limits ``split``, if any: DATA.META_INFO_FILE with ``{split}`` filled in, or
        without ``{split}`` for the training split only (as S-VRT's training dataset reads it)."""
        given = self.options.meta_info_file
        if not given:
            return None
        if SPLIT_FIELD in given:
            return fill_split(given, self.split_name(split))
        return Path(given) if split == self.options.meta_info_split else None

    @property
    def stats_dir(self) -> Path:
        """Where ``voxel_stats.json`` lives: the spike tree's root (``ROOT`` in the unified layout)."""
        return self.spike_root

    def spike_size(self, given: Optional[Sequence[int]] = None) -> tuple[int, int]:
        """The spike sensor size: ``given`` (DATA.SPIKE_SIZE), else what the dataset's files say."""
        if not self.root.is_dir():
            key = "DATA.GT_ROOT" if self.kind == ROOTS else "DATA.ROOT"
            raise DatasetError(f"dataset root {self.root} is not a folder ({key}): give the folder holding "
                               f"train/ and val/, or GoPro's GOPRO_Large/ and GOPRO_Large_spike_seq/")
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


def fill_split(template: str, split: str) -> Path:
    """``template`` with ``{split}`` replaced by the split's name (a plain replace: paths may hold other braces)."""
    return Path(template.replace(SPLIT_FIELD, split))


def above_split(template: str) -> Path:
    """The folder above the first path component that holds ``{split}`` (the parent when none does)."""
    parts = Path(template).parts
    named = [i for i, part in enumerate(parts) if SPLIT_FIELD in part]
    return Path(*parts[:named[0]]) if named and named[0] else Path(template).parent


def open_layout(root: os.PathLike | str | DataLayout | None,
                options: LayoutOptions = LayoutOptions()) -> DataLayout:
    """The layout of ``root`` (DATA.ROOT; may be empty when ``options`` name GT_ROOT and LQ_ROOT): separate roots
    when ``options`` name GT_ROOT and LQ_ROOT, S-VRT's when ``ROOT/GOPRO_Large`` holds ``*_GT`` folders or LMDBs (or
    IO_BACKEND is lmdb), the release when ``ROOT/GOPRO_Large`` exists, the unified layout otherwise. A
    ``DataLayout`` is returned as it is. Nothing is validated here (``layout.scan_split`` does that)."""
    if isinstance(root, DataLayout):
        return root
    given = Path(root) if root not in (None, "") else None
    if options.gt_root or options.lq_root:
        return _separate_roots(given, options)
    root = Path(root if given is not None else ".")
    frames = root / RELEASE_FRAMES
    if options.lmdb or _holds_svrt_frames(frames):
        spike_root, spike_split = _spike_tree(root / RELEASE_SPIKES, options)
        return DataLayout(root, SVRT, spike_root, str(frames / SVRT_BLUR), str(frames / SVRT_SHARP), spike_split,
                          options, ("", ""))
    release = frames.is_dir()
    return _nested(root, RELEASE if release else UNIFIED, frames if release else root,
                   root / RELEASE_SPIKES if release else root, options)


def _nested(root: Path, kind: str, frames_root: Path, default_spikes: Path, options: LayoutOptions) -> DataLayout:
    """A layout of ``SPLIT/SEQ/{blur,sharp}`` folders under ``frames_root``."""
    spike_root, spike_split = _spike_tree(default_spikes, options)
    split = str(frames_root / SPLIT_FIELD)
    return DataLayout(root, kind, spike_root, split, split, spike_split, options)


def _holds_svrt_frames(frames: Path) -> bool:
    """S-VRT's ``GOPRO_Large``: ``SPLIT_GT`` (and ``SPLIT_GT_blurred``) folders or their LMDBs."""
    return frames.is_dir() and any(p.name.endswith(("_GT", "_GT.lmdb")) for p in frames.iterdir())


def _spike_tree(default: Path, options: LayoutOptions) -> tuple[Path, str]:
    """(the spike tree's root, the template of a split's spike folder): DATA.SPIKE_ROOT, else ``default``."""
    given = options.spike_root
    if given and SPLIT_FIELD in given:
        return above_split(given), given
    tree = Path(given) if given else default
    return tree, str(tree / SPLIT_FIELD)


def _separate_roots(root: Optional[Path], options: LayoutOptions) -> DataLayout:
    """S-VRT's dataroot_gt / dataroot_lq / dataroot_spike (DATA.GT_ROOT, LQ_ROOT, SPIKE_ROOT)."""
    if not (options.gt_root and options.lq_root):
        raise DatasetError(f"DATA.GT_ROOT ({options.gt_root}) and DATA.LQ_ROOT ({options.lq_root}) name the sharp "
                           f"and the blurry frames together: give both")
    if not options.spike_root and root is None:
        raise DatasetError("DATA.SPIKE_ROOT is not set: with DATA.GT_ROOT and DATA.LQ_ROOT it names the spike "
                           "streams' folder (S-VRT's dataroot_spike, e.g. /data/GOPRO_Large_spike_seq/{split})")
    default = root / RELEASE_SPIKES if root is not None and (root / RELEASE_SPIKES).is_dir() else root
    spike_root, spike_split = _spike_tree(default, options)
    return DataLayout(root if root is not None else above_split(options.gt_root), ROOTS, spike_root,
                      options.lq_root, options.gt_root, spike_split, options, ("", ""))


def sequence_dirs_of(seq_dir: Path, options: LayoutOptions = LayoutOptions()) -> tuple[SequenceDirs, DataLayout]:
    """A sequence folder given on its own (``SPLIT/SEQ`` of some dataset) and the dataset it sits in: its spike
    folder is the same ``SPLIT/SEQ`` in that dataset's spike tree, i.e. ``SEQ`` itself in the unified layout
    without DATA.SPIKE_ROOT, and ``GOPRO_Large_spike_seq/SPLIT/SEQ`` for a sequence of the release."""
    seq_dir = Path(seq_dir).resolve()
    split, frames_root = seq_dir.parent.name, seq_dir.parent.parent
    if frames_root.name == RELEASE_FRAMES:
        layout = open_layout(frames_root.parent, options)
    else:  # whatever folders sit beside it: a sequence outside GOPRO_Large is in the unified layout
        layout = _nested(frames_root, UNIFIED, frames_root, frames_root, options)
    return SequenceDirs(seq_dir.name, seq_dir, layout.spikes_dir(split) / seq_dir.name), layout


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
    """The command-line twins of DATA.SPIKE_DIR, VOXEL_CACHE_DIRNAME, IMAGE_EXTS and of the locations
    (``add_location_arguments``)."""
    defaults = LayoutOptions()
    parser.add_argument("--spike-dir", default=defaults.spike_dir, help="spike folder of a sequence (DATA.SPIKE_DIR)")
    parser.add_argument("--voxel-dir", default=defaults.voxel_dir,
                        help="voxel cache folder of a sequence (DATA.VOXEL_CACHE_DIRNAME)")
    parser.add_argument("--image-exts", nargs="+", default=list(defaults.image_exts),
                        help="frame file extensions that count (DATA.IMAGE_EXTS)")
    add_location_arguments(parser)


def add_location_arguments(parser: argparse.ArgumentParser) -> None:
    """The command-line twins of where a dataset's parts are: DATA.SPIKE_ROOT, GT_ROOT, LQ_ROOT, META_INFO_FILE and
    IO_BACKEND."""
    parser.add_argument("--spike-root", help="separate spike tree SPLIT/SEQ/spike, or a split's SEQ/spike "
                        "(DATA.SPIKE_ROOT; {split} = the split's name; default: the one in ROOT)")
    parser.add_argument("--gt-root", help="a split's sharp frames SEQ/NNNNNN.png (DATA.GT_ROOT, S-VRT's "
                        "dataroot_gt; {split} = the split's name), with --lq-root instead of ROOT's layout")
    parser.add_argument("--lq-root", help="a split's blurry frames SEQ/NNNNNN.png (DATA.LQ_ROOT, dataroot_lq)")
    parser.add_argument("--meta-info-file", help="KAIR meta_info file: only the sequences and frames it lists "
                        "(DATA.META_INFO_FILE; the first split's, or each split's with {split})")
    parser.add_argument("--io-backend", choices=IO_BACKENDS, default=LayoutOptions().io_backend,
                        help="frames from image files, or from KAIR LMDBs (frame roots with .lmdb after them)")


def layout_options(args: argparse.Namespace) -> LayoutOptions:
    """``LayoutOptions`` from the arguments ``add_layout_arguments`` added; a meta_info file without ``{split}``
    limits the first of ``args.splits`` (the training split) when the tool has them."""
    exts = tuple(e if e.startswith(".") else f".{e}" for e in args.image_exts)
    splits = getattr(args, "splits", None) or [LayoutOptions.meta_info_split]
    return LayoutOptions(spike_root=args.spike_root, spike_dir=args.spike_dir, voxel_dir=args.voxel_dir,
                         image_exts=exts, gt_root=args.gt_root, lq_root=args.lq_root,
                         meta_info_file=args.meta_info_file, meta_info_split=splits[0], io_backend=args.io_backend)
