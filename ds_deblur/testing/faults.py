"""Fault injection for the tests and the reliability suite. Never set these in real runs.

``DS_DEBLUR_INJECT_NONFINITE="3,batch:5,grad:7"``: at those optimizer steps rank 0 makes, in its first micro-batch,
the loss infinite (a bare step number, or ``loss:N``: an fp16 overflow, a bf16/fp32 non-finite loss), its input
batch NaN (``batch:N``), or the gradients NaN while the loss stays finite (``grad:N``). The train loop reaches
them through one hook, ``Injections.around``.
``DS_DEBLUR_KILL_IN_SAVE=TAG``: the last rank SIGKILLs itself in the middle of saving TAG (its files written,
the tag not committed). ``DS_DEBLUR_KILL_IN_EXPORT=TAG``: rank 0 SIGKILLs itself in the middle of the background
export of TAG to its single file: the new file written under its temporary name, not yet renamed.
``DS_DEBLUR_KILL_RECORD=FILE``: a rank about to SIGKILL itself for one of these appends a JSON line {where, tag,
rank, pid} to FILE first (flushed to disk), so a test can tell its injected kill from a crash.
"""
from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

INJECT_ENV = "DS_DEBLUR_INJECT_NONFINITE"
KILL_IN_SAVE_ENV = "DS_DEBLUR_KILL_IN_SAVE"
KILL_IN_EXPORT_ENV = "DS_DEBLUR_KILL_IN_EXPORT"
KILL_RECORD_ENV = "DS_DEBLUR_KILL_RECORD"
KINDS = ("loss", "batch", "grad")
_KILL_ENVS = {"save": KILL_IN_SAVE_ENV, "export": KILL_IN_EXPORT_ENV}

# (blur, spike, sharp, flow_spike or None) -> (loss, parts): one micro-batch's forward pass and loss
ForwardLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]], tuple[torch.Tensor, dict]]


def kill_point(where: str, name: str, last_rank: bool = False) -> None:
    """SIGKILL this process here when the test's variable for ``where`` names ``name`` (on the last rank only
    with ``last_rank``, else on any rank that gets here)."""
    if os.environ.get(_KILL_ENVS[where]) != name:
        return
    if last_rank and dist.is_initialized() and dist.get_rank() != dist.get_world_size() - 1:
        return
    _record_kill(where, name)
    os.kill(os.getpid(), signal.SIGKILL)


def _record_kill(where: str, name: str) -> None:
    """Append this kill to the file KILL_RECORD_ENV names (when set), on disk before the process dies."""
    path = os.environ.get(KILL_RECORD_ENV)
    if not path:
        return
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(path, "a") as handle:
        handle.write(json.dumps({"where": where, "tag": name, "rank": rank, "pid": os.getpid()}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class Injections:
    """Which optimizer steps get which non-finite value (rank 0's first micro-batch of the step)."""
    steps: dict[str, set[int]] = field(default_factory=dict)
    done: set[tuple[str, int]] = field(default_factory=set)

    @classmethod
    def from_env(cls, rank: int) -> "Injections":
        steps: dict[str, set[int]] = {kind: set() for kind in KINDS}
        for item in filter(None, (x.strip() for x in os.environ.get(INJECT_ENV, "").split(","))):
            kind, _, step = item.rpartition(":")
            kind = kind or "loss"
            if kind not in steps or not step.isdigit():
                raise ValueError(f"{INJECT_ENV}={os.environ[INJECT_ENV]!r}: '{item}' is not STEP or KIND:STEP with "
                                 f"KIND one of {', '.join(KINDS)}")
            steps[kind].add(int(step))
        return cls(steps if rank == 0 else {})

    def around(self, step: int, forward_loss: ForwardLoss) -> ForwardLoss:
        """``forward_loss`` itself, or a version of it that injects what is due at ``step`` (once per step)."""
        due = {kind for kind, steps in self.steps.items() if step in steps and (kind, step) not in self.done}
        if not due:
            return forward_loss
        self.done.update((kind, step) for kind in due)

        def injected(blur: torch.Tensor, spike: torch.Tensor, sharp: torch.Tensor,
                     flow_spike: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict]:
            if "batch" in due:
                blur = blur.clone()
                blur[..., 0, 0] = float("nan")
            loss, parts = forward_loss(blur, spike, sharp, flow_spike)
            if "loss" in due:
                loss = loss * float("inf")
            if "grad" in due:
                loss = _NaNGradient.apply(loss)
            return loss, parts
        return injected


class _NaNGradient(torch.autograd.Function):
    """The identity, whose backward pass sends NaN: every gradient turns NaN while the loss stays finite."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return torch.full_like(grad, float("nan"))
