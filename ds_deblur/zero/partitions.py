"""This rank's share of DeepSpeed's ZeRO optimizer state (DeepSpeed 0.19): the fp32 master partitions, which
optimizer group each belongs to, and how the module's (low-precision) weights are refreshed from them.

Where the masters live:
- ZeRO 1/2 (``DeepSpeedZeroOptimizer``): ``single_partition_of_fp32_groups``, one flat partition per parameter group;
  ``update_lp_params`` copies it into this rank's slice of the module's flat weights and all-gathers them.
- bf16 with ZeRO 1 (``BF16_Optimizer``, tag files ``bf16_zero_pp_rank_*``): ``fp32_groups_flat_partition``, the same
  layout and the same ``update_lp_params``.
- ZeRO 3 (``DeepSpeedZeroOptimizer_Stage3``): ``fp32_partitioned_groups_flat``, one flat per sub-group
  (``sub_group_to_group_id`` names its group); the module's partitions (each parameter's ``ds_tensor``) are views of
  ``fp16_partitioned_groups_flat`` (in fp32 runs possibly the masters themselves), and parameters under the
  persistence threshold are also kept whole on every rank, re-gathered after each step.
Only this module and ``ds_deblur.ckpt.tag_io`` touch these internals.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from deepspeed.utils import (safe_set_full_fp32_param, safe_set_full_optimizer_state, safe_set_local_fp32_param,
                             safe_set_local_optimizer_state)

from ds_deblur.errors import ConfigError

_MASTERS = ("single_partition_of_fp32_groups", "fp32_groups_flat_partition", "fp32_partitioned_groups_flat")


def base_optimizer(engine: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrapper (the AdamW we built)."""
    return getattr(engine.optimizer, "optimizer", engine.optimizer)


def master_flats(engine: Any) -> list[torch.Tensor]:
    """This rank's fp32 master partitions, in the order DeepSpeed saves them (what the EMA follows). An engine
    without them in memory (no ZeRO, or ZeRO-3 state on NVMe) is an error naming TRAIN.EMA_DECAY."""
    flats = _masters(engine)
    if flats is None:
        raise ConfigError(f"TRAIN.EMA_DECAY needs ZeRO stage 1, 2 or 3 (fp32 master partitions to follow); this "
                          f"engine runs ZeRO stage {engine.zero_optimization_stage()}: set zero_optimization.stage in "
                          f"the DeepSpeed JSON (all ds_configs/*.json use 1, 2 or 3)")
    swapped = any(flat is None for flat in getattr(engine.optimizer, "fp16_partitioned_groups_flat", []))
    if getattr(engine.optimizer, "swap_optimizer", False) or swapped:
        raise ConfigError("TRAIN.EMA_DECAY does not work with ZeRO-3 state offloaded to NVMe (the partitions are "
                          "not in memory); use offload device cpu or none")
    return list(flats)


def _masters(engine: Any) -> Optional[list[torch.Tensor]]:
    return next((getattr(engine.optimizer, name) for name in _MASTERS if hasattr(engine.optimizer, name)), None)


def group_flats(engine: Any) -> list[list[torch.Tensor]]:
    """What AdamW keeps its state by, per parameter group: the master partitions (ZeRO 3: the group's sub-groups),
    or without ZeRO the parameters themselves."""
    base, flats = base_optimizer(engine), _masters(engine)
    if flats is None:
        return [list(group["params"]) for group in base.param_groups]
    groups: list[list[torch.Tensor]] = [[] for _ in base.param_groups]
    sub_to_group = getattr(engine.optimizer, "sub_group_to_group_id", None)
    for index, flat in enumerate(flats):
        groups[sub_to_group[index] if sub_to_group is not None else index].append(flat)
    return groups


@torch.no_grad()
def group_params(engine: Any) -> list[list[torch.nn.Parameter]]:
    """The trained parameters of each optimizer parameter group (ZeRO 3: its sub-groups joined)."""
    opt = engine.optimizer
    for name in ("bit16_groups", "bf16_groups"):
        if hasattr(opt, name):
            return [list(group) for group in getattr(opt, name)]
    groups: list[list[torch.nn.Parameter]] = [[] for _ in base_optimizer(engine).param_groups]
    if hasattr(opt, "fp16_groups") and hasattr(opt, "sub_group_to_group_id"):
        for i, sub_group in enumerate(opt.fp16_groups):
            groups[opt.sub_group_to_group_id[i]] += list(sub_group)
        return groups
    return [list(group["params"]) for group in base_optimizer(engine).param_groups]


def push_masters_to_module(engine: Any) -> None:
    """Make the module's weights (every rank's whole copy, or ZeRO 3's partitions) equal the fp32 masters again,
    as DeepSpeed does at the end of an optimizer step. Every rank must call it (it all-gathers)."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "fp32_partitioned_groups_flat"):  # ZeRO 3, as its step() does:
        optimizer._partition_all_parameters()  # release gathered copies (an all-gather skips available ones)
        for sub_group, flat in enumerate(optimizer.fp16_partitioned_groups_flat):
            flat.data.copy_(optimizer.fp32_partitioned_groups_flat[sub_group].data)  # a no-op when they alias
            optimizer._unflatten_partitioned_parameters(sub_group)
        if optimizer.persistent_parameters:
            optimizer.persistent_parameters[0].all_gather(optimizer.persistent_parameters)
        return
    optimizer.update_lp_params()  # ZeRO 1/2 and BF16_Optimizer


@torch.no_grad()
def swap_(a: torch.Tensor, b: torch.Tensor, chunk: int = 1 << 20) -> None:
    """Exchange the values of two tensors of the same size in place, ``chunk`` values at a time (no full copy)."""
    a, b = a.view(-1), b.view(-1)
    for start in range(0, a.numel(), chunk):
        x, y = a[start:start + chunk], b[start:start + chunk]
        held = x.clone()
        x.copy_(y)
        y.copy_(held)


def set_full(param: torch.nn.Parameter, value: torch.Tensor, key: Optional[str] = None) -> None:
    """Write a whole fp32 tensor (the weights, or optimizer state ``key``) into ZeRO's partitions of ``param``."""
    value = value.float()
    if not hasattr(param, "ds_id"):  # ZeRO 1/2
        safe_set_full_fp32_param(param, value) if key is None else safe_set_full_optimizer_state(param, value, key)
        return
    # ZeRO-3: DeepSpeed's full setter does not pad the last rank's share, so cut this rank's share ourselves.
    rank = dist.get_rank() if dist.is_initialized() else 0
    share = param.ds_tensor.ds_numel
    piece = value.flatten()[rank * share:(rank + 1) * share]
    piece = torch.nn.functional.pad(piece, (0, share - piece.numel()))
    safe_set_local_fp32_param(param, piece) if key is None else safe_set_local_optimizer_state(param, piece, key)
