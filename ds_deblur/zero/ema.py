"""EMA weights sharded like the optimizer state (TRAIN.EMA_DECAY; KAIR's ``E_decay``, BasicSR's ``ema_decay``).

Each rank keeps the exponential moving average of only the fp32 master partitions it owns under ZeRO 1, 2 or 3
(``ds_deblur.zero.partitions``): one shadow tensor per master flat, so its memory is 1/N of a full fp32 copy. After every
optimizer step that DeepSpeed applied (never after a skipped fp16 overflow or non-finite step):

    ema = decay x ema + (1 - decay) x master        (each product rounded on its own, so any layout gives the same
                                                      bits as the same formula on whole tensors)

The shadow starts as the weights the run starts from (as KAIR and BasicSR do). It has the masters' layout, so a tag's
per-rank ``ema_rank{r}.pt`` files are gathered into whole tensors exactly as the masters are
(``ds_deblur.ckpt.gather``), and whole EMA tensors are cut into a new rank's shadow by the same setters that write
the masters (``load_full``). Validation with the EMA weights swaps shadow and masters in place, refreshes the
module's weights from them as DeepSpeed does after a step, and swaps back (``swapped_in``): no full copy either.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from ds_deblur.config import Config
from ds_deblur.errors import CheckpointFormatError
from ds_deblur.zero import partitions

FILE = "ema_rank{rank}.pt"
_CHUNK = 1 << 20  # values per update slice: bounds the temporary of (1 - decay) x master


def ema_file(tag_dir: Path, rank: int) -> Path:
    return Path(tag_dir) / FILE.format(rank=rank)


def read_ema_file(path: Path) -> dict:
    """A rank's saved EMA (``decay``, ``updates``, ``flats``), memory-mapped; damage is one error naming the file."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # torch raises several types for damaged archives; all mean the same to the user
        raise CheckpointFormatError(f"{path} cannot be read ({type(err).__name__}: {err})") from None


class ShardedEMA:
    """The EMA of this rank's fp32 master partitions of a DeepSpeed engine (ZeRO 1, 2 or 3)."""

    def __init__(self, engine: Any, decay: float) -> None:
        self.engine, self.decay = engine, float(decay)
        self.shadow = [flat.detach().clone() for flat in partitions.master_flats(engine)]
        self.updates = 0  # applied steps averaged in since the shadow was (re)started

    @classmethod
    def from_config(cls, engine: Any, cfg: Config) -> Optional["ShardedEMA"]:
        """The run's EMA, or None when TRAIN.EMA_DECAY is 0."""
        return cls(engine, cfg.TRAIN.EMA_DECAY) if cfg.TRAIN.EMA_DECAY > 0 else None

    @property
    def masters(self) -> list[torch.Tensor]:
        return partitions.master_flats(self.engine)

    def numel(self) -> int:
        return sum(s.numel() for s in self.shadow)

    @torch.no_grad()
    def reset(self) -> None:
        """Restart the average at the current weights (a run that starts, or resumes a checkpoint without EMA)."""
        for shadow, master in zip(self.shadow, self.masters):
            shadow.copy_(master)
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        keep, take = self.decay, 1.0 - self.decay
        for shadow, master in zip(self.shadow, self.masters):
            shadow, master = shadow.view(-1), master.detach().view(-1)
            for start in range(0, shadow.numel(), _CHUNK):
                part = shadow[start:start + _CHUNK]
                part.mul_(keep).add_(master[start:start + _CHUNK] * take)
        self.updates += 1

    def after_step(self) -> bool:
        """Average in the step just taken if DeepSpeed applied it; returns whether it did."""
        applied = bool(self.engine.was_step_applied())
        if applied:
            self.update()
        return applied

    # --- files ----------------------------------------------------------------------------------------------

    def save(self, tag_dir: Path, rank: int) -> Path:
        path = ema_file(tag_dir, rank)
        torch.save({"decay": self.decay, "updates": self.updates, "flats": [s.cpu() for s in self.shadow]}, path)
        return path

    @torch.no_grad()
    def load(self, tag_dir: Path, rank: int) -> bool:
        """This rank's shadow from a tag saved on the same world size; False when the tag has no EMA."""
        path = ema_file(tag_dir, rank)
        if not path.is_file():
            return False
        saved = read_ema_file(path)
        flats = saved["flats"]
        if [f.numel() for f in flats] != [s.numel() for s in self.shadow]:
            raise CheckpointFormatError(
                f"{path} holds EMA partitions of {[f.numel() for f in flats]} values, this engine's fp32 partitions "
                f"have {[s.numel() for s in self.shadow]}: the tag was saved with another ZeRO layout")
        for shadow, flat in zip(self.shadow, flats):
            shadow.copy_(flat)
        self.updates = int(saved.get("updates", 0))
        return True

    @torch.no_grad()
    def load_full(self, weights: dict[str, torch.Tensor], updates: int = 0) -> None:
        """This rank's shadow from whole fp32 EMA tensors (any world size and stage): the values are written into
        the masters with the setter that writes weights into ZeRO's partitions, copied out as the shadow, and the
        masters put back."""
        masters = self.masters
        held = [m.detach().clone() for m in masters]  # 1/N of a full copy, only while this runs
        try:
            for name, param in self.engine.module.named_parameters():
                if param.requires_grad:
                    partitions.set_full(param, weights[name])
            for shadow, master in zip(self.shadow, masters):
                shadow.copy_(master)
        finally:
            for master, value in zip(masters, held):
                master.copy_(value)
        self.updates = updates

    # --- validating with the EMA weights ------------------------------------------------------------------

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Inside, the module computes with the EMA weights; after, masters, module weights and shadow are exactly
        what they were. Every rank must enter it together (it all-gathers)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    def _swap(self) -> None:
        for shadow, master in zip(self.shadow, self.masters):
            partitions.swap_(shadow, master)
        partitions.push_masters_to_module(self.engine)
