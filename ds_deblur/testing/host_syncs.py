"""Counting the collectives and host reads of each optimizer step, for the test that bounds them. Never set in real
runs.

``DS_DEBLUR_COUNT_SYNCS=DIR``: each rank wraps ``torch.distributed``'s collectives and the ``Tensor`` methods that
bring a value to the host (``item``, ``tolist``, ``__float__``, ``__int__``, ``__bool__``, ``cpu``, ``numpy``), and
appends to ``DIR/rank{r}.jsonl`` one line per optimizer step: what was called since the previous step ended, keyed
``"collective:all_reduce:ds_deblur"`` / ``"read:item:deepspeed"``: kind, name, and the package of the first caller
outside torch (``ds_deblur``, ``deepspeed`` or ``other``; ``dataloader`` for torch's DataLoader). Only blocking
collectives count (not ``async_op=True``). On a GPU each of these waits for the device.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

ENV = "DS_DEBLUR_COUNT_SYNCS"
COLLECTIVES = ("all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
               "broadcast", "reduce", "barrier", "all_to_all_single", "gather", "scatter")
READS = ("item", "tolist", "__float__", "__int__", "__bool__", "cpu", "numpy")


class SyncCounter:
    """Counts since the last :meth:`step_done`; ``None`` unless ``DS_DEBLUR_COUNT_SYNCS`` is set."""

    def __init__(self, path: Path) -> None:
        self.path, self.counts = path, Counter()
        for name in COLLECTIVES:
            if hasattr(dist, name):
                setattr(dist, name, self._wrap(getattr(dist, name), "collective", name))
        for name in READS:
            setattr(torch.Tensor, name, self._wrap(getattr(torch.Tensor, name), "read", name))

    @classmethod
    def from_env(cls, rank: int) -> Optional["SyncCounter"]:
        folder = os.environ.get(ENV)
        if not folder:
            return None
        Path(folder).mkdir(parents=True, exist_ok=True)
        return cls(Path(folder) / f"rank{rank}.jsonl")

    def step_done(self, step: int) -> None:
        """Write what optimizer step ``step`` called, and start counting the next one."""
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"step": step, "counts": dict(self.counts)}) + "\n")
        self.counts = Counter()

    def _wrap(self, fn: Callable, kind: str, name: str) -> Callable:
        @functools.wraps(fn)
        def counted(*args: Any, **kwargs: Any) -> Any:
            if kind == "read" or not kwargs.get("async_op", False):
                self.counts[f"{kind}:{name}:{_caller()}"] += 1
            return fn(*args, **kwargs)
        return counted


def _caller() -> str:
    """The package of the first frame outside torch and this module; ``dataloader`` for torch's DataLoader (which
    reads a CPU random number for its workers' seeds whenever an epoch's iterator starts)."""
    frame = sys._getframe(2)
    while frame is not None and _package_of(frame.f_code.co_filename) in ("torch", "this"):
        frame = frame.f_back
    return "other" if frame is None else _package_of(frame.f_code.co_filename)


@functools.lru_cache(maxsize=None)
def _package_of(filename: str) -> str:
    import deepspeed  # the trainer has imported it already; a top-level import would cost every test ~2 s
    if filename == __file__:
        return "this"
    where = str(Path(filename).resolve())
    folders = (("dataloader", torch.utils.data), ("torch", torch), ("deepspeed", deepspeed),
               ("ds_deblur", sys.modules["ds_deblur"]))
    for name, module in folders:  # torch.utils.data before torch: it lies inside
        if where.startswith(str(Path(module.__file__).resolve().parent) + os.sep):
            return name
    return "other"
