"""Everything about checkpoints, in one package.

    tags        tag directories, their commit marker (COMMIT.json) and ``latest``; ``resolve(path)`` says what a
                checkpoint path is (the only code that reads or writes the marker or ``latest``)
    atomic      crash-safe file writes
    tag_io      live engine <-> files: save + commit a tag, load a tag (any world size), load a single file
    gather      reading a tag offline: ZeRO partitions gathered into whole fp32 tensors (weights, Adam moments,
                EMA weights, frozen parameters)
    single_file the single-file format (last.pth / best.pth): read, build from a tag
    keys        a file's model keys under this model's names (torch.compile / DDP prefixes stripped)
    weights     model weights from any checkpoint kind; fp32 weights exports
    export      single-file exports in a background thread of rank 0
    universal   DeepSpeed's universal checkpoint, for a tag resumed on another world size
    retention   which step tags stay on disk
    rng         per-rank RNG streams inside a tag
    compat      which config changes a resumed run accepts
    state       TrainState and the tag's client state
    manager     CheckpointManager: what the trainer calls
    cli         ds-deblur convert and ds-deblur inspect
"""
import importlib
from typing import Any

# Resolved on first use: ``ds-deblur convert`` / ``inspect`` (ckpt.cli) import this package and must not import
# DeepSpeed before they send stdout to stderr (DeepSpeed's logger binds to the stdout of its first import).
_EXPORTS = {"CheckpointManager": "manager", "CheckpointOptions": "manager", "TrainState": "state", "Location": "tags",
            "resolve": "tags"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ds_deblur.ckpt' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ds_deblur.ckpt.{_EXPORTS[name]}"), name)
