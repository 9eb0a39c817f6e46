"""File helpers the checkpoint and reliability tests share."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def copy_tag(tags: Path, name: str, dest: Path) -> Path:
    """The tag ``tags/ckpts/NAME`` alone in ``dest/ckpts`` (caches a load writes land beside it, not in ``tags``)."""
    return Path(shutil.copytree(tags / "ckpts" / name, dest / "ckpts" / name))


def digest(folder: Path) -> str:
    """SHA-256 over every file below ``folder``: relative path and bytes, in sorted order."""
    sha = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return sha.hexdigest()
