"""S-VRT's ``pase`` fusion operator: ``rgb_proj(rgb) + pase(spike)``, a 1x1 projection of RGB plus the
pixel-adaptive spike encoding (see ``ds_deblur.models.svrt.pase_encoder``)."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.fusion.concat import PARAMS_KEY, OperatorParams, fuse_frames
from ds_deblur.models.svrt.pase_encoder import PixelAdaptiveSpikeEncoder

PASE_OPTIONS = ("kernel_size", "hidden_chans", "normalize_kernel")


def pase_encoder(params: OperatorParams, in_chans: int, out_chans: int) -> PixelAdaptiveSpikeEncoder:
    """The encoder configured by ``kernel_size`` (3, odd), ``hidden_chans`` (32) and ``normalize_kernel`` (true)."""
    kernel_size = params.integer("kernel_size", default=3)
    if kernel_size % 2 == 0:
        raise ConfigError(f"{PARAMS_KEY}.kernel_size must be odd so the PASE patches keep the map size, "
                          f"got {kernel_size}")
    return PixelAdaptiveSpikeEncoder(in_chans, out_chans, kernel_size=kernel_size,
                                     hidden_chans=params.integer("hidden_chans", default=32),
                                     normalize_kernel=params.flag("normalize_kernel", default=True))


class PaseFusion(nn.Module):
    """``(..., rgb_chans, H, W)``, ``(..., spike_chans, H, W)`` -> ``(..., out_chans, H, W)`` per frame, 4-D or 5-D.

    Options: those of :func:`pase_encoder`.
    """

    frame_contract = "expanded"

    def __init__(self, rgb_chans: int, spike_chans: int, out_chans: int, operator_params: Mapping[str, Any]) -> None:
        super().__init__()
        self.rgb_chans, self.spike_chans, self.out_chans = rgb_chans, spike_chans, out_chans
        self.pase = pase_encoder(OperatorParams(operator_params, "pase", PASE_OPTIONS), spike_chans, out_chans)
        self.rgb_proj = nn.Conv2d(rgb_chans, out_chans, kernel_size=1)

    def forward(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        return fuse_frames(self._fuse, rgb, spike, self.rgb_chans, self.spike_chans)

    def _fuse(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        return self.rgb_proj(rgb) + self.pase(spike)
