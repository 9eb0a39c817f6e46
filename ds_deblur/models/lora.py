"""LoRA adapters on the backbone's linear layers, with S-VRT's names and rules (``models/lora.py`` @2ac8c0b).

A targeted ``nn.Linear`` becomes :class:`LoRALinear`: ``base(x) + (alpha / rank) * lora_B(lora_A(x))``, ``lora_A``
Kaiming-uniform and ``lora_B`` zero, so a new adapter changes nothing. Its parameters are
``<layer>.base.weight``, ``<layer>.base.bias``, ``<layer>.lora_A.weight``, ``<layer>.lora_B.weight``. Targets are
the linear layers whose own name contains one of the target strings (S-VRT's default ``qkv`` and ``proj``), never
inside the fusion module, the flow net or the alignment. Folding (:func:`fold`) gives the weights under
the plain layer names, as S-VRT's ``{iter}_G_merged.pth``.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from torch import Tensor, nn

# Dotted-name parts whose linear layers never get adapters (S-VRT's list).
EXCLUDED = ("fusion_adapter", "fusion_operator", "mamba_token_mixer", "pa_deform", ".dcn.", "spynet")
ADAPTER_PARTS = (".lora_A.", ".lora_B.")


class LoRALinear(nn.Module):
    """A frozen-or-not ``base`` linear layer plus a rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=base.weight.device,
                                dtype=base.weight.dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=base.weight.device,
                                dtype=base.weight.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


def inject_lora(model: nn.Module, targets: Sequence[str], rank: int, alpha: float) -> list[str]:
    """Replace each targeted ``nn.Linear`` of ``model`` by a :class:`LoRALinear` in place; returns their names."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {rank}")
    replaced = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if (isinstance(child, nn.Linear) and any(t in child_name for t in targets)
                    and not any(part in name for part in EXCLUDED)):
                setattr(parent, child_name, LoRALinear(child, rank, alpha))
                replaced.append(name)
    return replaced


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_adapters(state_dict: Mapping[str, Tensor]) -> bool:
    return any(part in key for key in state_dict for part in ADAPTER_PARTS)


def adapted_layers(state_dict: Mapping[str, Tensor]) -> list[str]:
    """The names of the layers that carry adapters in a state dict."""
    return [key[:-len(".lora_A.weight")] for key in state_dict if key.endswith(".lora_A.weight")]


def fold(state_dict: Mapping[str, Tensor], scaling: float) -> dict[str, Tensor]:
    """A state dict with adapters -> the plain one: each adapted layer's ``weight`` is ``base.weight + scaling *
    lora_B @ lora_A`` (``scaling`` = alpha / rank) and its ``bias`` the base's. In S-VRT's ``merged_state_dict``
    order: the other keys as they come, then the folded layers'."""
    layers = adapted_layers(state_dict)
    owned = {f"{name}.{part}" for name in layers for part in ("base.weight", "base.bias", "lora_A.weight",
                                                               "lora_B.weight")}
    folded = {}
    for name in layers:
        weight = state_dict[f"{name}.base.weight"]
        delta = state_dict[f"{name}.lora_B.weight"].to(weight.dtype) @ state_dict[f"{name}.lora_A.weight"].to(
            weight.dtype)
        folded[f"{name}.weight"] = weight + delta * scaling
        if f"{name}.base.bias" in state_dict:
            folded[f"{name}.bias"] = state_dict[f"{name}.base.bias"]
    return {**{k: v for k, v in state_dict.items() if k not in owned}, **folded}


def as_base_weights(model: nn.Module, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Plain weights (no adapters) for a model with adapters: each adapted layer's ``weight``/``bias`` become its
    ``base.*``, its adapters keep their initial values (S-VRT loads such a file before injecting LoRA)."""
    layers = lora_layers(model)
    if not layers or has_adapters(state_dict):
        return dict(state_dict)
    renamed = {}
    for key, value in state_dict.items():
        layer, _, leaf = key.rpartition(".")
        renamed[f"{layer}.base.{leaf}" if layer in layers else key] = value
    own = model.state_dict()
    return {**renamed, **{k: own[k] for k in own if any(part in k for part in ADAPTER_PARTS)}}
