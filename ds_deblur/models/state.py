"""Loading a released weights file into a model: every key, every shape, or an error naming what does not fit."""
from __future__ import annotations

from collections.abc import Mapping

from torch import nn


def load_exactly(model: nn.Module, state: Mapping, what: str, hint: str) -> None:
    """``model.load_state_dict(state, strict=True)``, but a missing, unexpected or misshapen key is a ``ValueError``
    that names them, ``what`` was loaded (e.g. ``VRT weights FILE``) and ``hint``: what to change so it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    misshapen = [f"{k} file {tuple(state[k].shape)} model {tuple(v.shape)}" for k, v in own.items()
                 if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or misshapen:
        def head(keys: list[str]) -> str:
            return f"{len(keys)} {keys[:6]}{' ...' if len(keys) > 6 else ''}"
        raise ValueError(f"{what} do not match the model: missing {head(missing)}; unexpected {head(unexpected)}; "
                         f"shape mismatch {head(misshapen)}. {hint}")
    model.load_state_dict(state, strict=True)
