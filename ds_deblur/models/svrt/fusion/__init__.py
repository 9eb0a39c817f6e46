"""S-VRT's fusion operators, by their ``netG.fusion.operator`` names."""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ds_deblur.models.svrt.fusion.attention import AttentionFusion
from ds_deblur.models.svrt.fusion.concat import ConcatFusion
from ds_deblur.models.svrt.fusion.dual_scale_temporal_mamba import DualScaleTemporalMambaFusion
from ds_deblur.models.svrt.fusion.gated import GatedFusion
from ds_deblur.models.svrt.fusion.mamba import MambaFusion
from ds_deblur.models.svrt.fusion.pase import PaseFusion
from ds_deblur.models.svrt.fusion.pase_residual import PaseResidualFusion

OPERATORS: dict[str, type[nn.Module]] = {
    "concat": ConcatFusion, "gated": GatedFusion, "attention": AttentionFusion, "pase": PaseFusion,
    "pase_residual": PaseResidualFusion, "mamba": MambaFusion,
    "dual_scale_temporal_mamba": DualScaleTemporalMambaFusion,
}


def build_operator(name: str, rgb_chans: int, spike_chans: int, out_chans: int,
                   operator_params: Mapping[str, Any]) -> nn.Module:
    """The operator ``name`` (checked by ds_deblur.models.svrt.options) fusing ``rgb_chans`` RGB/feature channels
    with ``spike_chans`` spike channels into ``out_chans``."""
    return OPERATORS[name](rgb_chans, spike_chans, out_chans, operator_params)
