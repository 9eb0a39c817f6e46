"""S-VRT's two training phases inside one run, as the train loop sees them: which phase a step is in, what the
model's forward returns then, the loss, and the data loader.

Phase 1 is the optimizer steps before TRAIN.FIX_ITER. With TRAIN.FUSION_FIRST (S-VRT's ``fix_iter`` with early
fusion) the model's forward returns the fused frames without running the backbone (S-VRT's
``_phase1_fusion_forward``) and the loss is LOSS.FUSION's phase-1 terms; which parameters train, and their fresh
Adam state at the switch, are ``zero.staged``'s. Phase 2 trains on the restored output with the main loss, plus
LOSS.FUSION.PHASE2_WEIGHT x the fused frames' loss. DATA.PHASE1_CROP_SIZE and TRAIN.PHASE1_BATCH_SIZE give phase 1
its own loader over the same sampler, so the sample position runs on across the switch and a resume.
Validation always runs the whole network (as S-VRT's test does in either phase).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

from ds_deblur.config import Config
from ds_deblur.data.loader import ResumableDataLoader, resized
from ds_deblur.errors import ConfigError
from ds_deblur.losses import DeblurLoss, FusionLoss

FUSED_PLACEMENTS = ("early", "hybrid")  # where S-VRT's network makes fused frames a loss can see


class Phases:
    """The phases of a run of ``cfg`` training ``module`` (the engine's) from ``loader`` (phase 2's)."""

    def __init__(self, cfg: Config, module: nn.Module, loader: ResumableDataLoader, main_loss: DeblurLoss) -> None:
        train = cfg.TRAIN
        self.until, self.fusion_first = train.FIX_ITER, train.FUSION_FIRST
        self.module, self.main_loss, self.fusion = module, main_loss, FusionLoss.from_config(cfg)
        self.aux = cfg.LOSS.FUSION.PHASE2_WEIGHT > 0
        if self.fusion_first or self.aux:
            _require_fused_frames(module, "TRAIN.FUSION_FIRST" if self.fusion_first else "LOSS.FUSION.PHASE2_WEIGHT")
        self.batch = {1: train.PHASE1_BATCH_SIZE or train.BATCH_SIZE, 2: train.BATCH_SIZE}
        self.crop = {phase: cfg.DATA.phase_crop_hw(phase) for phase in (1, 2)}
        self.sized = self.batch[1] != self.batch[2] or self.crop[1] != self.crop[2]
        self.loaders: dict[int, Optional[ResumableDataLoader]] = {1: None, 2: loader}

    @property
    def active(self) -> bool:
        """Whether the run has two phases that differ (logged as train/phase)."""
        return self.until > 0 and (self.fusion_first or self.sized)

    def phase(self, step: int) -> int:
        """The phase of the optimizer step after ``step`` completed ones."""
        return 1 if self.active and step < self.until else 2

    def loader(self, step: int) -> ResumableDataLoader:
        """The training loader of the phase at ``step``: phase 1's is built on first use and dropped after."""
        phase = self.phase(step)
        if phase == 2:
            self.loaders[1] = None  # its workers go with it
        elif self.loaders[1] is None:
            self.loaders[1] = resized(self.loaders[2], self.batch[1], self.crop[1]) if self.sized else self.loaders[2]
        return self.loaders[phase]

    def needs_flow(self, step: int) -> bool:
        """Whether the forward at ``step`` uses the flow spike input (phase 1 runs no flow net)."""
        return not (self.fusion_first and self.phase(step) == 1)

    @contextlib.contextmanager
    def training_forward(self, step: int) -> Iterator[None]:
        """The model set up for the training forward of the step after ``step``: fused frames only in phase 1,
        fused frames kept for the loss in phase 2; back to the whole network on exit."""
        if not (self.fusion_first or self.aux):  # a model without fused frames is left alone
            yield
            return
        phase1 = self.fusion_first and self.phase(step) == 1
        self.module.fusion_only, self.module.keep_fused = phase1, self.aux and not phase1
        try:
            yield
        finally:
            self.module.fusion_only = self.module.keep_fused = False
            self.module.last_fused = None

    def loss(self, out: torch.Tensor, sharp: torch.Tensor, blurry: torch.Tensor,
             step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the training forward's ``out`` (inside ``training_forward(step)``)."""
        if getattr(self.module, "fusion_only", False):
            total, parts = self.fusion.phase1(out, sharp, blurry, step + 1)
            if self.fusion.passthrough != (0.0, 0.0):
                parts["weight_passthrough"] = torch.tensor(self.fusion.passthrough_weight(step + 1))
            return total, parts
        total, parts = self.main_loss(out.float(), sharp)
        if getattr(self.module, "keep_fused", False):
            extra, more = self.fusion.phase2(self.module.last_fused, sharp)
            total, parts = total + extra, {**parts, **more}
        return total, parts

    def describe(self) -> str:
        """One line on the phases, for the log."""
        sizes = {p: f"batch {self.batch[p]}, crop {self.crop[p][0]}x{self.crop[p][1]}" for p in (1, 2)}
        what = ("the fusion module alone on its fused frames (LOSS.FUSION), no backbone forward"
                if self.fusion_first else "the TRAIN.FIX_KEYS parameters fixed")
        return (f"[train] Phase 1 (steps 1-{self.until}): {what}; {sizes[1]}. Phase 2 (from step {self.until + 1}): "
                f"{sizes[2]}")


def _require_fused_frames(module: nn.Module, key: str) -> None:
    placement = getattr(getattr(module, "options", None), "placement", None)
    if placement not in FUSED_PLACEMENTS:
        raise ConfigError(f"{key} needs S-VRT's network with early or hybrid fusion (netG.fusion.placement early or "
                          f"hybrid; this model has {placement or 'no fusion'}): its loss is on the fused frames")

