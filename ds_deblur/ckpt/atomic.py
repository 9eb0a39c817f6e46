"""Crash-safe file writes: a file is either its previous version or its new one, never half of each.

Write to a temporary name beside the target, flush it to disk, rename it over the target, flush the directory.
A process killed in the middle leaves only a temporary (``.NAME.tmp-PID``), which ``remove_temporaries`` clears.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Union

import torch

PathLike = Union[str, Path]
_TMP_MARK = ".tmp-"


def write_atomic(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Run ``write`` on a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        write(tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)  # the rename itself is only durable once the directory entry is on disk
    return path


def save_atomic(obj: Any, path: PathLike) -> Path:
    """``torch.save`` that never leaves a half-written ``path``."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def write_text_atomic(path: PathLike, text: str) -> Path:
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporaries that killed writers left in ``directory`` (not recursive); returns them."""
    stale = [p for p in Path(directory).glob(f".*{_TMP_MARK}*") if p.is_file()] if Path(directory).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
