"""Fault injection for the tests and the reliability suite. Never set these in real runs.

``DS_DEBLUR_INJECT_NONFINITE="3,batch:5,grad:7"``: at those optimizer steps rank 0 makes, in its first micro-batch,
the loss infinite (a bare step number, or ``loss:N``: an fp16 overflow, a bf16/fp32 non-finite loss), its input
batch NaN (``batch:N``), or one parameter's gradient NaN while the loss stays finite (``grad:N``).
``DS_DEBLUR_KILL_IN_SAVE=TAG`` (ds_deblur.checkpoint): the last rank SIGKILLs itself in the middle of saving TAG.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

INJECT_ENV = "DS_DEBLUR_INJECT_NONFINITE"
KINDS = ("loss", "batch", "grad")


@dataclass
class Injections:
    """Which optimizer steps get which non-finite value."""
    steps: dict[str, set[int]] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Injections":
        steps: dict[str, set[int]] = {kind: set() for kind in KINDS}
        for item in filter(None, (x.strip() for x in os.environ.get(INJECT_ENV, "").split(","))):
            kind, _, step = item.rpartition(":")
            kind = kind or "loss"
            if kind not in steps or not step.isdigit():
                raise ValueError(f"{INJECT_ENV}={os.environ[INJECT_ENV]!r}: '{item}' is not STEP or KIND:STEP with "
                                 f"KIND one of {', '.join(KINDS)}")
            steps[kind].add(int(step))
        return cls(steps)

    def wants(self, kind: str, step: int) -> bool:
        return step in self.steps.get(kind, ())


def poison_batch(blur: torch.Tensor) -> torch.Tensor:
    poisoned = blur.clone()
    poisoned[..., 0, 0] = float("nan")
    return poisoned


def nan_gradient(module: torch.nn.Module) -> Optional[Any]:
    """Make the next backward pass give the module's first trainable parameter a NaN gradient; returns the hook
    handle to remove afterwards."""
    param = next((p for p in module.parameters() if p.requires_grad), None)
    return None if param is None else param.register_hook(lambda grad: torch.full_like(grad, float("nan")))
