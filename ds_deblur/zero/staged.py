"""Staged fine-tuning, KAIR's recipe for VRT (``fix_iter``, ``fix_keys``, ``fix_lr_mul``), and frozen parameters.

- ``TRAIN.FREEZE``: parameters whose name contains one of the strings never train. They get ``requires_grad=False``
  before ``deepspeed.initialize``, so DeepSpeed keeps them out of the optimizer (no fp32 master, no Adam moments, no
  gradient) and saves them as frozen parameters of the module. Under fp16/bf16 they are held in that precision,
  like every module weight (DeepSpeed keeps fp32 copies only of what it trains).
- ``TRAIN.FIX_KEYS``: parameters whose name contains one of the strings form the optimizer's second group, at
  LR x ``TRAIN.FIX_LR_MUL`` (the same torch schedulers drive both groups: warm-up and cosine scale each group's own
  LR; the cosine floor MIN_LR is the same for both, as in KAIR). For the first ``TRAIN.FIX_ITER`` optimizer steps
  they are not updated.
- ``TRAIN.FUSION_FIRST`` (S-VRT's phases): the parameters outside the fusion module form one more group that waits
  FIX_ITER steps (phase 1 trains the fusion module alone; the trainer skips the backbone's forward then), and with
  ``TRAIN.HEAD_ONLY_STEPS`` the fusion operator's feature layers another that waits that many steps (S-VRT's
  ``writeback_only`` warm-up). Each waiting group starts with a fresh Adam state, as S-VRT's parameters that get
  their first gradient do.

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

from dataclasses import dataclass
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
FUSION = ["fusion_adapter", "fusion_operator"]  # what S-VRT's phase 1 trains (its fusion-only forward reaches)


@dataclass
class Delayed:
    """Trained parameters in their own optimizer group that start training after ``start`` optimizer steps."""
    why: str  # what delays them, as the log says it
    start: int
    names: list[str]
    lr_mul: float = 1.0


def matches(name: str, keys: list[str]) -> bool:
    return any(key in name for key in keys)


def freeze(model: nn.Module, cfg: Config) -> list[str]:
    """Set ``requires_grad=False`` (before ``deepspeed.initialize``) on the TRAIN.FREEZE parameters, with
    TRAIN.FREEZE_BACKBONE on all but the fusion module's, the adapters' and the FIX_KEYS ones (which train after
    FIX_ITER, as S-VRT's phase 2 releases them), and with MODEL.LORA_FREEZE_BASE on the adapted layers' own
    weights; returns their names."""
    keys, train = cfg.TRAIN.FREEZE, cfg.TRAIN
    params = dict(model.named_parameters())
    chosen = [name for name in params if matches(name, keys)]
    if keys and not chosen:
        raise ConfigError(f"TRAIN.FREEZE {keys} matches no parameter of this model (names look like "
                          f"{', '.join(list(params)[:3])})")
    if train.FREEZE_BACKBONE:
        kept = BACKBONE_EXCEPTIONS + train.FIX_KEYS
        chosen += [name for name in params if not matches(name, kept)]
    if cfg.MODEL.LORA_RANK and cfg.MODEL.LORA_FREEZE_BASE:
        chosen += [f"{layer}.base.{leaf}" for layer, m in lora_layers(model).items() for leaf, _ in
                   m.base.named_parameters()]
    chosen_set = set(chosen)
    names = [name for name in params if name in chosen_set]
    if names and len(names) == len(params):
        with_backbone = " with TRAIN.FREEZE_BACKBONE" if train.FREEZE_BACKBONE else ""
        raise ConfigError(f"TRAIN.FREEZE {keys}{with_backbone} matches every parameter: nothing would train")
    for name in names:
        params[name].requires_grad_(False)
    return names


def delayed(model: nn.Module, cfg: Config) -> list[Delayed]:
    """The trained parameters that start later, one optimizer group each, in group order from 1: the FIX_KEYS
    ones (KAIR's fix_iter), then with TRAIN.FUSION_FIRST everything phase 1 does not train (S-VRT's phase 2), then
    the fusion operator's feature layers held back for TRAIN.HEAD_ONLY_STEPS (S-VRT's fusion warm-up)."""
    train = cfg.TRAIN
    trained = [name for name, p in model.named_parameters() if p.requires_grad]
    out = []
    if train.FIX_KEYS:
        fixed = [name for name in trained if matches(name, train.FIX_KEYS)]
        if not fixed:
            raise ConfigError(f"TRAIN.FIX_KEYS {train.FIX_KEYS} match no trained parameter of this model"
                              + (f" (TRAIN.FREEZE {train.FREEZE} froze some)" if train.FREEZE else ""))
        out.append(Delayed("TRAIN.FIX_KEYS", train.FIX_ITER, fixed, train.FIX_LR_MUL))
    if train.FUSION_FIRST:
        taken = set(out[0].names) if out else set()
        out.append(Delayed("phase 2 (TRAIN.FUSION_FIRST)", train.FIX_ITER,
                           [n for n in trained if n not in taken and not matches(n, FUSION)]))
        if train.HEAD_ONLY_STEPS:
            features = [f"{prefix}.{module}." for prefix in FUSION for module in _feature_modules(model, prefix)]
            out.append(Delayed("fusion warm-up (TRAIN.HEAD_ONLY_STEPS)", min(train.HEAD_ONLY_STEPS, train.FIX_ITER),
                               [n for n in trained if n not in taken and matches(n, features)]))
    out = [d for d in out if d.names]
    if out and sum(len(d.names) for d in out) == len(trained):
        raise ConfigError(f"TRAIN.FIX_KEYS {train.FIX_KEYS} match every trained parameter: use TRAIN.OPTIM.LR for all "
                          f"of them" if not train.FUSION_FIRST else
                          "TRAIN.FUSION_FIRST: phase 1 would train nothing (no fusion parameter is trained)")
    return out


def _feature_modules(model: nn.Module, prefix: str) -> tuple[str, ...]:
    """The layers of the fusion operator under ``prefix`` that S-VRT's ``writeback_only`` warm-up stage holds back."""
    operator = getattr(model, prefix, None)
    operator = getattr(operator, "operator", operator)
    return tuple(getattr(operator, "feature_modules", ()))


def param_groups(model: nn.Module, cfg: Config) -> Union[list[nn.Parameter], list[dict]]:
    """What AdamW optimizes: every trained parameter in one group, or one group of those trained from the start
    followed by one per ``delayed`` set, at LR x its multiplier, without weight decay while it waits."""
    params = dict(model.named_parameters())
    later = delayed(model, cfg)
    if not later:
        return [p for p in params.values() if p.requires_grad]
    waiting = {name for d in later for name in d.names}
    first = [p for name, p in params.items() if p.requires_grad and name not in waiting]
    train = cfg.TRAIN
    return [{"params": first}] + [{"params": [params[n] for n in d.names], "lr": train.OPTIM.LR * d.lr_mul,
                                   "weight_decay": 0.0 if d.start > 0 else train.OPTIM.WEIGHT_DECAY} for d in later]


def _zero_gradient(grad: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(grad)


class FixedPhase:
    """Keeps each ``delayed`` group of an engine built with ``param_groups`` unchanged until its start step;
    ``apply(step)`` after building or restoring, ``after_step(step)`` after each step."""

    def __init__(self, engine: Any, cfg: Config) -> None:
        self.engine = engine
        self.weight_decay = cfg.TRAIN.OPTIM.WEIGHT_DECAY
        self.groups = delayed(engine.module, cfg)
        named = dict(engine.module.named_parameters())
        self._params = [[named[n] for n in d.names] for d in self.groups]
        self._hooks: list[list] = [[] for _ in self.groups]

    @property
    def params(self) -> list[nn.Parameter]:
        """The TRAIN.FIX_KEYS parameters (none without them)."""
        return self._params[0] if self.groups and self.groups[0].why == "TRAIN.FIX_KEYS" else []

    @property
    def fixed(self) -> bool:
        return any(self._hooks)

    def apply(self, step: int) -> None:
        """Put each group in its state at ``step`` completed steps (a restored optimizer group keeps whatever weight
        decay the checkpoint had; this sets the state's)."""
        for i, group in enumerate(self.groups):
            if step < group.start:
                self._fix(i)
            else:
                self._release(i, reset_adam=False)

    def after_step(self, step: int) -> list[Delayed]:
        """Release the groups whose start is ``step``; returns them."""
        released = [i for i, group in enumerate(self.groups) if group.start and step == group.start]
        for i in released:
            self._release(i, reset_adam=True)
        return [self.groups[i] for i in released]

    def _fix(self, i: int) -> None:
        if not self._hooks[i]:
            self._hooks[i] = [p.register_hook(_zero_gradient) for p in self._params[i]]
        self._group(i)["weight_decay"] = 0.0

    def _release(self, i: int, reset_adam: bool) -> None:
        for hook in self._hooks[i]:
            hook.remove()
        self._hooks[i] = []
        self._group(i)["weight_decay"] = self.weight_decay
        if reset_adam:  # moments are exactly 0 here: with step 0 too, Adam's state is a fresh one, as in KAIR
            state = partitions.base_optimizer(self.engine).state
            for flat in partitions.group_flats(self.engine)[i + 1]:
                if "step" in state.get(flat, {}):
                    step = state[flat]["step"]
                    state[flat]["step"] = torch.zeros_like(step) if torch.is_tensor(step) else 0

    def _group(self, i: int) -> dict:
        return partitions.base_optimizer(self.engine).param_groups[i + 1]
