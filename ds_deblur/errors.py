"""The one error family: everything ds_deblur raises on bad input derives from ``DsDeblurError``.

Entry points catch the base and print its message (which names the file or key and says what to do); anything
else is a bug and keeps its traceback. Each class also derives from a builtin error
(``ValueError``, ``RuntimeError``, ``FileNotFoundError``), so callers that catch the builtin catch it too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union


class DsDeblurError(Exception):
    """Base of every error ds_deblur raises on bad configs, data, checkpoints or options."""


class ConfigError(DsDeblurError, ValueError):
    """A config value is missing, unknown, of the wrong type or impossible."""


class DatasetError(DsDeblurError, ValueError):
    """The dataset on disk is missing, malformed or inconsistent; the message names the file and the fix."""


class EngineConfigError(DsDeblurError, ValueError):
    """The DeepSpeed JSON is unreadable, contradicts the YAML or cannot run on this machine."""


class WeightsNotFoundError(DsDeblurError, FileNotFoundError):
    """A pretrained weights file (SpyNet, VGG16, official VRT) given by path does not exist."""


class CheckpointError(DsDeblurError, RuntimeError):
    """A checkpoint is missing, incomplete, unreadable or does not fit this run."""


class CheckpointFormatError(CheckpointError, ValueError):
    """A checkpoint file or tag is not ours, is truncated or is inconsistent."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that does not exist: the same message on every path that reads checkpoints."""

    def __init__(self, path: Union[str, Path]) -> None:
        super().__init__(f"Checkpoint not found: {path}")


class UniversalError(CheckpointError):
    """The conversion of a tag to DeepSpeed's universal format failed."""


class InferenceError(DsDeblurError, ValueError):
    """A checkpoint, a sequence or an option that inference cannot use; the message says what to do."""
