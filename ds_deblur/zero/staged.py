"""Staged fine-tuning, KAIR's recipe for VRT (``fix_iter``, ``fix_keys``, ``fix_lr_mul``), and frozen parameters.

- ``TRAIN.FREEZE``: parameters whose name contains one of the strings never train. They get ``requires_grad=False``
  before ``deepspeed.initialize``, so DeepSpeed keeps them out of the optimizer (no fp32 master, no Adam moments, no
  gradient) and saves them as frozen parameters of the module. Under fp16/bf16 they are held in that precision,
  like every module weight (DeepSpeed keeps fp32 copies only of what it trains).
- ``TRAIN.FIX_KEYS``: parameters whose name contains one of the strings form the optimizer's second group, at
  LR x ``TRAIN.FIX_LR_MUL`` (the same torch schedulers drive both groups: warm-up and cosine scale each group's own
  LR; the cosine floor MIN_LR is the same for both, as in KAIR). For the first ``TRAIN.FIX_ITER`` optimizer steps
  they are not updated.

How "not updated" stays exact under every ZeRO stage: KAIR sets ``requires_grad=False`` and back, which DeepSpeed
cannot follow after ``initialize`` (its partitions and gradient hooks are fixed then), and setting the group's LR to
0 would break torch's chainable schedulers (CosineAnnealingLR computes each LR from the group's current one). So
during the fixed steps a tensor hook replaces these parameters' gradients by zeros and their group's weight decay is
0: AdamW's moments stay exactly 0 and its update ``lr x m / (sqrt(v) + eps)`` is exactly 0, so the weights keep
their bits (tested). They also add nothing to the clipped gradient norm, as in KAIR where they have no gradient.
At step ``FIX_ITER`` the hook goes, the weight decay comes back, and the group's Adam step count is reset to 0: its
moments are still 0, so from there the parameters see exactly KAIR's fresh Adam state (bias correction from step 1).
Two differences from KAIR remain: the gradients of the fixed parameters are computed (then zeroed) during the fixed
steps, which costs their backward pass; and KAIR releases them at its iteration FIX_ITER (its counter starts at 1),
so it fixes FIX_ITER - 1 steps, this fixes FIX_ITER.
"""
from __future__ import annotations

from typing import Any, Union

import torch
from torch import nn

from ds_deblur.config import Config
from ds_deblur.errors import ConfigError
from ds_deblur.models.lora import lora_layers
from ds_deblur.zero import partitions

FIXED_GROUP = 1  # the FIX_KEYS parameters' optimizer group (the others are group 0)
# What TRAIN.FREEZE_BACKBONE leaves trainable, by name (S-VRT's freeze_backbone markers).
BACKBONE_EXCEPTIONS = ["fusion_adapter", "fusion_operator", "lora_A", "lora_B"]


def matches(name: str, keys: list[str]) -> bool:
    return any(key in name for key in keys)


def freeze(model: nn.Module, cfg: Config) -> list[str]:
    """Set ``requires_grad=False`` (before ``deepspeed.initialize``) on the TRAIN.FREEZE parameters, with
    TRAIN.FREEZE_BACKBONE on all but the fusion module's and the adapters', and with MODEL.LORA_FREEZE_BASE on the
    adapted layers' own weights; returns their names."""
    keys = cfg.TRAIN.FREEZE
    params = dict(model.named_parameters())
    chosen = [name for name in params if matches(name, keys)]
    if keys and not chosen:
        raise ConfigError(f"TRAIN.FREEZE {keys} matches no parameter of this model (names look like "
                          f"{', '.join(list(params)[:3])})")
    if cfg.TRAIN.FREEZE_BACKBONE:
        chosen += [name for name in params if not matches(name, BACKBONE_EXCEPTIONS)]
    if cfg.MODEL.LORA_RANK and cfg.MODEL.LORA_FREEZE_BASE:
        chosen += [f"{layer}.base.{leaf}" for layer, m in lora_layers(model).items() for leaf, _ in
                   m.base.named_parameters()]
    chosen_set = set(chosen)
    names = [name for name in params if name in chosen_set]
    if names and len(names) == len(params):
        with_backbone = " with TRAIN.FREEZE_BACKBONE" if cfg.TRAIN.FREEZE_BACKBONE else ""
        raise ConfigError(f"TRAIN.FREEZE {keys}{with_backbone} matches every parameter: nothing would train")
    for name in names:
        params[name].requires_grad_(False)
    return names


def param_groups(model: nn.Module, cfg: Config) -> Union[list[nn.Parameter], list[dict]]:
    """What AdamW optimizes: every trained parameter in one group, or with TRAIN.FIX_KEYS two groups, the others
    first and the fixed ones at LR x FIX_LR_MUL (their weight decay is 0 while they are fixed)."""
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    keys, train = cfg.TRAIN.FIX_KEYS, cfg.TRAIN
    if not keys:
        return [p for _, p in trained]
    fixed = [p for name, p in trained if matches(name, keys)]
    if not fixed:
        raise ConfigError(f"TRAIN.FIX_KEYS {keys} match no trained parameter of this model"
                          + (f" (TRAIN.FREEZE {train.FREEZE} froze some)" if train.FREEZE else ""))
    if len(fixed) == len(trained):
        raise ConfigError(f"TRAIN.FIX_KEYS {keys} match every trained parameter: use TRAIN.OPTIM.LR for all of them")
    others = [p for name, p in trained if not matches(name, keys)]
    decay = 0.0 if train.FIX_ITER > 0 else train.OPTIM.WEIGHT_DECAY
    return [{"params": others}, {"params": fixed, "lr": train.OPTIM.LR * train.FIX_LR_MUL, "weight_decay": decay}]


def _zero_gradient(grad: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(grad)


class FixedPhase:
    """Keeps the TRAIN.FIX_KEYS parameters unchanged for the first TRAIN.FIX_ITER optimizer steps of an engine
    built with ``param_groups``; ``apply(step)`` after building or restoring, ``after_step(step)`` after each step."""

    def __init__(self, engine: Any, cfg: Config) -> None:
        self.engine, self.until = engine, cfg.TRAIN.FIX_ITER
        self.weight_decay = cfg.TRAIN.OPTIM.WEIGHT_DECAY
        keys = cfg.TRAIN.FIX_KEYS
        self.params = [p for name, p in engine.module.named_parameters() if p.requires_grad and matches(name, keys)]
        self._hooks: list = []

    @property
    def fixed(self) -> bool:
        return bool(self._hooks)

    def apply(self, step: int) -> None:
        """Put the run in its phase at ``step`` completed steps (a restored optimizer group keeps whatever weight
        decay the checkpoint had; this sets the phase's)."""
        if step < self.until:
            self._fix()
        elif self.params:
            self._release(reset_adam=False)

    def after_step(self, step: int) -> bool:
        """Release the fixed parameters once ``step`` reaches FIX_ITER; True at that step."""
        if self.until == 0 or step != self.until:
            return False
        self._release(reset_adam=True)
        return True

    def _fix(self) -> None:
        if not self._hooks:
            self._hooks = [p.register_hook(_zero_gradient) for p in self.params]
        self._group()["weight_decay"] = 0.0

    def _release(self, reset_adam: bool) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self._group()["weight_decay"] = self.weight_decay
        if reset_adam:  # moments are exactly 0 here: with step 0 too, Adam's state is a fresh one, as in KAIR
            state = partitions.base_optimizer(self.engine).state
            for flat in partitions.group_flats(self.engine)[FIXED_GROUP]:
                if "step" in state.get(flat, {}):
                    step = state[flat]["step"]
                    state[flat]["step"] = torch.zeros_like(step) if torch.is_tensor(step) else 0

    def _group(self) -> dict:
        return partitions.base_optimizer(self.engine).param_groups[FIXED_GROUP]
