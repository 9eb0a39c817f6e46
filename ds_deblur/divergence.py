"""When a run has diverged: its optimizer steps keep being skipped for longer than the patience allows.

fp16: the loss scale sits at its minimum while steps still overflow (TRAIN.MIN_LOSS_SCALE_PATIENCE steps in a
row). bf16/fp32: steps skipped for non-finite losses or gradients (TRAIN.NONFINITE_PATIENCE steps in a row).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class DivergenceWatch:
    precision: str
    min_scale_patience: int
    nonfinite_patience: int
    min_scale_steps: int = 0
    skipped_in_a_row: int = 0

    def update(self, applied: bool, scale: float, min_scale: float) -> Optional[str]:
        """Count one optimizer step; returns why the run has diverged, or None."""
        at_min = self.precision == "fp16" and scale <= min_scale and not applied
        self.min_scale_steps = self.min_scale_steps + 1 if at_min else 0
        self.skipped_in_a_row = 0 if applied else self.skipped_in_a_row + 1
        if self.precision == "fp16" and self.min_scale_steps >= self.min_scale_patience:
            return (f"the fp16 loss scale has sat at its minimum for {self.min_scale_steps} consecutive overflowing "
                    f"steps (TRAIN.MIN_LOSS_SCALE_PATIENCE)")
        if self.precision != "fp16" and self.skipped_in_a_row >= self.nonfinite_patience:
            return (f"{self.skipped_in_a_row} consecutive steps had non-finite losses or gradients and were skipped "
                    f"(TRAIN.NONFINITE_PATIENCE)")
        return None
