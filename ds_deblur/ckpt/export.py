"""Single-file exports off the training path: after a tag commits, rank 0 writes ``last.pth`` / ``best.pth`` from it
in a background thread while training goes on.

One export runs at a time; a newer request for the same file replaces one still waiting. Every file is written
atomically, so a crash or kill during an export leaves the previous file whole, and ``stale_exports`` finds what a
killed run left one save behind so that the next run exports it again. The thread only reads committed tags from
disk (never the live engine), so training's numbers do not depend on when an export runs.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional, Union

import torch

from ds_deblur.ckpt.atomic import write_atomic
from ds_deblur.ckpt.single_file import single_file_dict, single_file_step
from ds_deblur.ckpt.tags import BEST, STEP_TAG, committed_step, list_tags, resolve, tag_problem
from ds_deblur.ckpt.weights import export_weights
from ds_deblur.errors import CheckpointFormatError
from ds_deblur.testing import faults

LAST_FILE, BEST_FILE = "last.pth", "best.pth"


def file_for(tag: str) -> str:
    """The single file a tag is exported to."""
    return BEST_FILE if tag == BEST else LAST_FILE


def export_single_file(tag_dir: Path, out_path: Path) -> Path:
    """Write a complete tag as a single file at ``out_path``, atomically."""
    ckpt = single_file_dict(tag_dir)

    def write(tmp: Path) -> None:
        torch.save(ckpt, tmp)
        faults.kill_point("export", tag_dir.name)  # the worst moment: the new file whole, not yet renamed
    return write_atomic(out_path, write)


def export_tag(ckpt: Union[str, Path], tag: Optional[str], out: Union[str, Path], weights_only: bool = False,
               ema: bool = False, merge_lora: bool = False) -> Path:
    """``ds-deblur convert``: write the tag named by ``ckpt`` (a checkpoint dir, + ``tag``, or a tag dir) to
    ``out``: the full training state (with the EMA weights when the run kept them), or only the fp32 weights
    (``.safetensors`` or ``.pth``; ``ema``: the EMA weights; ``merge_lora``: LoRA adapters folded in, under the
    plain layer names)."""
    location = resolve(ckpt, tag)
    if location.kind == "file":
        raise CheckpointFormatError(f"{location.path} is a file; convert reads DeepSpeed tags: pass the checkpoint "
                                    f"directory (CKPT_DIR) or a tag directory (CKPT_DIR/TAG)")
    if weights_only:
        return export_weights(location.path, Path(out), ema=ema, merge_lora=merge_lora)
    return export_single_file(location.path, Path(out))


def stale_exports(ckpt_dir: Path) -> list[tuple[str, str]]:
    """(tag, file) pairs whose single file is missing or older than its tag: ``last.pth`` from the newest complete
    tag, ``best.pth`` from ``best``. A run killed between a tag's commit and its export leaves them behind."""
    complete = [t for t in list_tags(ckpt_dir) if (STEP_TAG.match(t.name) or t.name == BEST) and tag_problem(t) is None]
    pairs = [(max(complete, key=lambda t: (committed_step(t), t.name != BEST)), LAST_FILE)] if complete else []
    if Path(ckpt_dir) / BEST in complete:
        pairs.append((Path(ckpt_dir) / BEST, BEST_FILE))
    return [(tag.name, name) for tag, name in pairs if single_file_step(Path(ckpt_dir) / name) != committed_step(tag)]


class BackgroundExporter:
    """Exports tags of one checkpoint directory to single files in a thread of rank 0.

    ``submit`` returns at once; ``in_use`` names the tags the thread reads or will read (retention keeps them);
    ``wait`` blocks until nothing is waiting or running. A failed export is reported through ``say`` and leaves
    the previous file in place; the tag itself stays the source of truth."""

    def __init__(self, ckpt_dir: Path, say: Callable[[str], None] = print) -> None:
        self.ckpt_dir, self.say = Path(ckpt_dir), say
        self._changed = threading.Condition()
        self._waiting: dict[str, str] = {}  # file name -> tag
        self._running: Optional[tuple[str, str]] = None  # (file name, tag)
        self._thread: Optional[threading.Thread] = None
        self.written: list[tuple[Path, float]] = []  # (file, seconds), for the curious and the tests
        self.failures: list[str] = []

    def submit(self, tag: str, name: Optional[str] = None) -> None:
        with self._changed:
            self._waiting[name or file_for(tag)] = tag
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="ds_deblur-export", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def in_use(self) -> set[str]:
        with self._changed:
            return self._busy()

    def wait(self, tag: Optional[str] = None) -> None:
        """Until every export (only those of ``tag``, when given) has finished."""
        with self._changed:
            self._changed.wait_for(lambda: tag not in self._busy() if tag else not self._busy())

    def _busy(self) -> set[str]:  # call with the lock held
        return set(self._waiting.values()) | ({self._running[1]} if self._running else set())

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._waiting))
                name = next(iter(self._waiting))
                self._running = (name, self._waiting.pop(name))
            self._export(*self._running)
            with self._changed:
                self._running = None
                self._changed.notify_all()

    def _export(self, name: str, tag: str) -> None:
        started = time.perf_counter()
        try:
            out = export_single_file(self.ckpt_dir / tag, self.ckpt_dir / name)
            self.written.append((out, time.perf_counter() - started))
        except Exception as err:  # noqa: BLE001 - a failed export must not end training; the tag is intact
            message = f"exporting {self.ckpt_dir / tag} to {name} failed ({type(err).__name__}: {err}); the " \
                      f"previous {name} is unchanged and the tag is complete"
            self.failures.append(message)
            self.say(f"[train] warning: {message}")
