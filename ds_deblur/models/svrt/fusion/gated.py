"""S-VRT's ``gated`` fusion operator: ``rgb + gate(x) * correction(x)`` with ``x = cat(rgb, spike)``.

The RGB path is the identity, so the operator cannot shift colours by itself; the correction's last conv starts
at zero and the gate's pre-sigmoid bias at -5, so a new operator passes RGB through unchanged.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.fusion.concat import OperatorParams, fuse_frames


def _branch(in_chans: int, hidden_chans: int, out_chans: int) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, hidden_chans, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_chans, out_chans, kernel_size=1)]


class GatedFusion(nn.Module):
    """``(..., rgb_chans, H, W)``, ``(..., spike_chans, H, W)`` -> ``(..., rgb_chans, H, W)`` per frame, 4-D or 5-D.

    Option: ``hidden_chans`` (32), the width of both branches.
    """

    frame_contract = "expanded"

    def __init__(self, rgb_chans: int, spike_chans: int, out_chans: int, operator_params: Mapping[str, Any]) -> None:
        super().__init__()
        if out_chans != rgb_chans:
            raise ConfigError(f"netG.fusion.out_chans must equal the RGB channels ({rgb_chans}) for the gated "
                              f"operator, whose update is added to its RGB input; got {out_chans}")
        hidden_chans = OperatorParams(operator_params, "gated", ("hidden_chans",)).integer("hidden_chans", default=32)
        self.rgb_chans, self.spike_chans, self.out_chans = rgb_chans, spike_chans, out_chans
        in_chans = rgb_chans + spike_chans
        self.correction = nn.Sequential(*_branch(in_chans, hidden_chans, out_chans))
        self.gate = nn.Sequential(*_branch(in_chans, hidden_chans, out_chans), nn.Sigmoid())
        nn.init.zeros_(self.correction[2].weight)
        nn.init.zeros_(self.correction[2].bias)
        nn.init.constant_(self.gate[2].bias, -5.0)  # sigmoid(-5) ~ 0.007

    def forward(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        return fuse_frames(self._fuse, rgb, spike, self.rgb_chans, self.spike_chans)

    def _fuse(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        x = torch.cat([rgb, spike], dim=1)
        return rgb + self.gate(x) * self.correction(x)
