"""A distributed sampler that is deterministic from (seed, epoch) and resumes mid-epoch on any world size.

The epoch's global order is a permutation of the dataset drawn from (seed, epoch) alone. The sampler's state is
the *global position*: how many samples of that order all ranks together have consumed. From position p, rank r
of W takes global positions p + r, p + r + W, p + r + 2W, ... so the ranks' union is the rest of the order in
sequence, whatever W is; a run saved at p on W ranks and restored on W' ranks sees exactly the samples an
uninterrupted W' run from p would see, and every sample of the epoch exactly once over both parts.

Uneven ends: each rank takes ceil(remaining / W) samples (default); positions past the end of the order wrap
around to its start, and such padding samples are flagged ``pad=True`` (training uses them like any other
sample, as torch's DistributedSampler does; evaluation ignores them so every sample counts once while every
rank runs the same number of steps). With ``drop_last=True`` each rank takes floor(remaining / W) and the
leftover tail of the epoch is skipped.

Each yielded key carries (index, epoch, position): the dataset seeds a sample's augmentation from
(seed, epoch, position), so crops and flips depend neither on the worker count nor on where a run resumed.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, NamedTuple

import numpy as np
from torch.utils.data import Sampler


class SampleKey(NamedTuple):
    """What the sampler hands the dataset for one sample."""
    index: int
    epoch: int
    position: int
    pad: bool


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The epoch's global order of dataset indices."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class ResumableDistributedSampler(Sampler[SampleKey]):
    """See the module docstring. The training loop (or ``ResumableDataLoader``) calls ``advance`` for every
    local batch it consumes; ``state_dict`` then records the global position to resume from."""

    def __init__(self, num_samples: int, num_replicas: int = 1, rank: int = 0, *, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False) -> None:
        if num_samples < 1:
            raise ValueError("cannot sample from an empty dataset")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.num_samples, self.num_replicas, self.rank = num_samples, num_replicas, rank
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        self.position = 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning, unless a loaded state already placed us inside it."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def advance(self, local_samples: int) -> None:
        """Record that this rank consumed ``local_samples`` (so all ranks together W times as many)."""
        self.position += local_samples * self.num_replicas

    def __len__(self) -> int:
        """Samples this rank yields from the current position to the end of the epoch."""
        remaining = max(self.num_samples - self.position, 0)
        rounding = math.floor if self.drop_last else math.ceil
        return rounding(remaining / self.num_replicas)

    def __iter__(self) -> Iterator[SampleKey]:
        # Read once here: ``advance`` moves self.position while the loader is still drawing from this iterator.
        start, count, epoch = self.position, len(self), self.epoch
        order = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)
        positions = start + self.rank + self.num_replicas * np.arange(count)
        return (SampleKey(int(order[p % self.num_samples]), epoch, int(p), bool(p >= self.num_samples))
                for p in positions)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": self.num_samples, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at ``state``'s epoch and global position (saved on any world size)."""
        for key in ("num_samples", "seed", "shuffle"):
            if state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r} but this sampler has "
                                 f"{getattr(self, key)!r}: the dataset or DATA/SEED config changed since it was saved")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
