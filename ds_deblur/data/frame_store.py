"""Where frame images are stored: files in folders, or KAIR's LMDB databases (S-VRT's ``io_backend: lmdb``).

A KAIR LMDB is a folder ``NAME.lmdb`` holding LMDB's ``data.mdb`` (and ``lock.mdb``) and a ``meta_info.txt``; each
frame ``CLIP/NNNNNN.png`` of the folder it was made from is stored under the key ``CLIP/NNNNNN`` (the relative path
without its extension) as PNG-encoded bytes. A clip of such a database (``LmdbClip``) stands where a frame folder
stands: ``clip / "000047"`` is the frame under key ``CLIP/000047`` (``LmdbFrame``), as ``folder / "000047.png"`` is
a file. ``open_frame`` opens either as a PIL image; every error names the file, or the database and the key.

Databases are opened read-only without locking (nothing writes them while we read) and once per process: an LMDB
environment must not be used across ``fork``, so a loader worker closes the one it inherited (its own copy of the
mapping; the parent's stays open) and opens its own on its first read.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import lmdb
from PIL import Image

from ds_deblur.errors import DatasetError

LMDB_SUFFIX = ".lmdb"


@dataclass(frozen=True)
class LmdbFrame:
    """One frame of a KAIR LMDB: the database folder and the key."""
    db: Path
    key: str

    @property
    def name(self) -> str:
        return self.key

    def __str__(self) -> str:
        return f"{self.db} (key {self.key})"


@dataclass(frozen=True)
class LmdbClip:
    """The frames of one clip in a KAIR LMDB: the keys ``CLIP/STEM``."""
    db: Path
    clip: str

    def __truediv__(self, stem: str) -> LmdbFrame:
        return LmdbFrame(self.db, f"{self.clip}/{stem}")

    def stems(self) -> list[str]:
        """The frame stems stored for this clip (none when the database does not exist)."""
        return clips_in(self.db).get(self.clip, []) if self.db.is_dir() else []

    def __str__(self) -> str:
        return f"{self.db} (keys {self.clip}/*)"


FrameRef = Union[Path, LmdbFrame]
FrameFolder = Union[Path, LmdbClip]

_ENVS: dict[Path, tuple[int, lmdb.Environment]] = {}  # db -> (the process that opened it, its environment)
_CLIPS: dict[Path, dict[str, list[str]]] = {}


def lmdb_path(root: Union[str, os.PathLike]) -> Path:
    """The database of a frame root, as S-VRT finds it: the root itself when it ends in ``.lmdb``, else with
    ``.lmdb`` after it."""
    root = Path(root)
    return root if root.name.endswith(LMDB_SUFFIX) else root.with_name(root.name + LMDB_SUFFIX)


def environment(db: Path) -> lmdb.Environment:
    """The read-only environment of ``db``, opened once per process."""
    pid = os.getpid()
    opened = _ENVS.pop(db, None)
    if opened is not None and opened[0] == pid:
        _ENVS[db] = opened
        return opened[1]
    if opened is not None:  # inherited through fork: py-lmdb refuses a second open of the files while it is open
        opened[1].close()
    if not (db / "data.mdb").is_file():
        raise DatasetError(f"{db} is not a KAIR LMDB (no {db / 'data.mdb'}); DATA.IO_BACKEND lmdb reads each "
                           f"frame root with .lmdb after it (KAIR's scripts/data_preparation/create_lmdb.py)")
    try:
        env = lmdb.open(str(db), readonly=True, lock=False, readahead=False)
    except lmdb.Error as err:
        raise DatasetError(f"cannot open the LMDB {db} ({err})") from err
    _ENVS[db] = (pid, env)
    return env


def clips_in(db: Path) -> dict[str, list[str]]:
    """{clip: frame stems} of every ``CLIP/STEM`` key in ``db`` (listed once: a database does not change while it
    is read)."""
    if db not in _CLIPS:
        clips: dict[str, list[str]] = {}
        with environment(db).begin() as txn:
            for raw in txn.cursor().iternext(keys=True, values=False):
                clip, _, stem = bytes(raw).decode("ascii", "replace").rpartition("/")
                clips.setdefault(clip, []).append(stem)
        _CLIPS[db] = clips
    return _CLIPS[db]


def read_bytes(frame: LmdbFrame) -> bytes:
    """The stored bytes of ``frame``."""
    with environment(frame.db).begin() as txn:
        value = txn.get(frame.key.encode("ascii"))
    if value is None:
        raise DatasetError(f"{frame.db} has no key {frame.key} (KAIR's key of {frame.key}.png)")
    return bytes(value)


def open_frame(frame: FrameRef) -> Image.Image:
    """``frame`` opened as a PIL image (decoded lazily). PIL's OSError/ValueError when it is not an image."""
    if isinstance(frame, LmdbFrame):
        return Image.open(io.BytesIO(read_bytes(frame)))
    return Image.open(frame)


def frame_format(frame: FrameRef) -> str:
    """The image format a frame must have: PNG for ``.png`` files and for LMDB frames (KAIR stores PNG bytes),
    whatever the other files' extension names otherwise ("" when it names none we check)."""
    if isinstance(frame, LmdbFrame) or frame.suffix.lower() == ".png":
        return "PNG"
    return ""
