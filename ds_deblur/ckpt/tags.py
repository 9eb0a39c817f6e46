"""Tags, their commit marker and ``latest``: the only code that reads or writes ``COMMIT.json`` and ``latest``,
and the one place that says what a checkpoint path is (``resolve``).

A tag ``CKPT_DIR/TAG`` is what ``engine.save_checkpoint`` writes on every rank plus one RNG file per rank and
``COMMIT.json``, written by rank 0 only after every rank finished and its files were flushed to disk. Only a tag
with a valid marker (every listed file present with its recorded size) counts. ``latest`` is rewritten after the
marker, atomically, so it never names a tag that is not complete. A tag being saved again (``best``) is written
under ``TAG.partial`` and swapped in only once complete.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from ds_deblur.ckpt.atomic import fsync_path, write_text_atomic
from ds_deblur.errors import CheckpointFormatError, CheckpointNotFoundError

COMMIT = "COMMIT.json"
LATEST = "latest"
SVRT_WEIGHTS = re.compile(r"^(?P<iter>\d+)_(?P<net>G|E|G_merged)\.pth$")  # S-VRT's weights files
BEST = "best"
PARTIAL = ".partial"
STEP_TAG = re.compile(r"^step_(\d+)$")
PathLike = Union[str, Path]


def step_tag(step: int) -> str:
    return f"step_{step:06d}"


# --- the commit marker ------------------------------------------------------------------------------------------

def commit(tag_dir: Path, tag: str, step: int, world_size: int) -> None:
    """Flush every file of the tag to disk, then write its marker listing them with their sizes (rank 0)."""
    files = {}
    for path in sorted(p for p in tag_dir.rglob("*") if p.is_file()):
        fsync_path(path)
        files[str(path.relative_to(tag_dir))] = path.stat().st_size
    marker = {"tag": tag, "step": step, "world_size": world_size, "saved_at": time.time(), "files": files}
    write_text_atomic(tag_dir / COMMIT, json.dumps(marker, indent=1))


def read_commit(tag_dir: Path) -> Optional[dict]:
    """The tag's marker, or None when it is missing or unreadable."""
    try:
        marker = json.loads((Path(tag_dir) / COMMIT).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def commit_fingerprint(tag_dir: Path) -> str:
    """The marker's exact text: it changes whenever the tag is saved again (caches of the tag compare it)."""
    return (Path(tag_dir) / COMMIT).read_text()


def tag_problem(tag_dir: Path) -> Optional[str]:
    """None when the tag is complete; otherwise why it is not."""
    tag_dir = Path(tag_dir)
    if not tag_dir.is_dir():
        return "does not exist"
    if not (tag_dir / COMMIT).is_file():
        return f"no {COMMIT} (the save did not finish)"
    marker = read_commit(tag_dir)
    if marker is None or not isinstance(marker.get("files"), dict):
        return f"{COMMIT} is corrupt or unreadable"
    for name, size in marker["files"].items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} expected (truncated or overwritten)"
    return None


def committed_step(tag_dir: Path) -> int:
    """The step a complete tag was saved at."""
    return int(read_commit(tag_dir)["step"])


def saved_world_size(tag_dir: Path) -> int:
    """The number of ranks that saved a complete tag."""
    return int(read_commit(tag_dir)["world_size"])


# --- latest and the tags of a directory ---------------------------------------------------------------------

def write_latest(ckpt_dir: Path, tag: str) -> None:
    write_text_atomic(Path(ckpt_dir) / LATEST, tag)


def read_latest(ckpt_dir: Path) -> Optional[str]:
    latest = Path(ckpt_dir) / LATEST
    return latest.read_text().strip() if latest.is_file() else None


def is_tag_dir(path: Path) -> bool:
    """A DeepSpeed tag directory (complete or not)."""
    return path.is_dir() and ((path / COMMIT).is_file() or any(path.glob("*model_states.pt")))


def list_tags(ckpt_dir: Path) -> list[Path]:
    """Tag directories under ``ckpt_dir``, complete or not, in natural name order (step_000500 < step_001000)."""
    tags = [child for child in Path(ckpt_dir).iterdir() if is_tag_dir(child)]
    return sorted(tags, key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)])


def step_tags(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every ``step_N`` directory, complete or not, oldest first."""
    found = ((STEP_TAG.match(p.name), p) for p in Path(ckpt_dir).iterdir() if p.is_dir())
    return sorted((int(match.group(1)), path) for match, path in found if match)


def newest_complete(ckpt_dir: Path) -> Optional[str]:
    """The complete tag with the highest step (a step tag before ``best`` at the same step), warning about every
    incomplete step tag it skips. Each tag is checked once."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    complete = []
    for path in sorted(p for p in ckpt_dir.iterdir() if p.is_dir()):
        problem = tag_problem(path)
        if problem is None:
            complete.append((committed_step(path), path.name != BEST, path.name))
        elif STEP_TAG.match(path.name):
            warnings.warn(f"skipping incomplete checkpoint {path}: {problem}", stacklevel=2)
    return max(complete)[2] if complete else None


def swap_in(ckpt_dir: Path, staging: str, tag: str) -> None:
    """Replace the complete tag ``tag`` by the complete ``staging`` one. Until the final rename the old tag stays
    in place (or as ``TAG.old``, still complete and loadable)."""
    old = ckpt_dir / f"{tag}.old"
    if old.exists():
        shutil.rmtree(old)
    os.replace(ckpt_dir / tag, old)
    os.replace(ckpt_dir / staging, ckpt_dir / tag)
    fsync_path(ckpt_dir)
    shutil.rmtree(old)


# --- what a checkpoint path is ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    """What a checkpoint path names: a single file (``last.pth``, a weights export), a tag, or (for listing) a whole
    checkpoint directory."""
    kind: Literal["file", "tag", "dir"]
    path: Path

    @property
    def ckpt_dir(self) -> Path:
        return self.path.parent if self.kind == "tag" else self.path

    @property
    def tag(self) -> str:
        return self.path.name


def newest_svrt_weights(folder: Path) -> Optional[Path]:
    """The newest ``{iter}_G.pth`` of an S-VRT experiment's ``models/`` folder (what S-VRT's
    ``pretrained_netG: auto`` finds), or None."""
    found = [(int(m["iter"]), p) for p in folder.glob("*_G.pth") if (m := SVRT_WEIGHTS.match(p.name))]
    return max(found)[1] if found else None


def resolve(path: PathLike, tag: Optional[str] = None, complete: bool = True) -> Location:
    """What ``path`` is: a file, a tag directory, or a checkpoint directory, which stands for its ``latest`` tag
    (or ``tag`` inside it); an S-VRT experiment's ``models/`` folder stands for its newest ``{iter}_G.pth``.

    A missing path is ``CheckpointNotFoundError`` ("Checkpoint not found: PATH"). With ``complete`` (loading), a
    directory that is neither a tag nor holds ``latest``, or a tag that is not complete, is
    ``CheckpointFormatError`` saying what to pass instead; without it (describing), a checkpoint directory stays a
    ``dir`` and a tag is returned complete or not."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(path)
    if path.is_file():
        if tag is not None:
            raise CheckpointFormatError(f"{path} is a file, so it has no tag {tag!r}: pass its checkpoint directory")
        return Location("file", path)
    if tag is not None:
        tag_dir = path / tag
        if not tag_dir.exists():
            raise CheckpointNotFoundError(tag_dir)
    elif is_tag_dir(path):
        tag_dir = path
    elif not complete:
        return Location("dir", path)
    else:
        name = read_latest(path)
        if name is None:
            svrt = newest_svrt_weights(path)
            if svrt is not None:
                return Location("file", svrt)
            found = ", ".join(p.name for p in list_tags(path)) or "none"
            raise CheckpointFormatError(
                f"{path} is neither a checkpoint directory (with a '{LATEST}' file) nor a tag (with {COMMIT}); "
                f"pass SAVE_DIR/ckpts, a tag such as SAVE_DIR/ckpts/step_NNNNNN, or a tag name (tags found: "
                f"{found})")
        tag_dir = path / name
    problem = tag_problem(tag_dir) if complete else None
    if problem is not None:
        raise CheckpointFormatError(f"{tag_dir} is incomplete or damaged: {problem}. Use another tag (ds-deblur "
                                    f"inspect {tag_dir.parent} lists them) or --resume auto, which "
                                    f"falls back to the newest complete one")
    return Location("tag", tag_dir)
