"""S-VRT's ``pase_residual`` fusion operator: a gated residual on the RGB frames from RGB context features plus
the pixel-adaptive encoding of all the frame's spike bins at once, both at full resolution."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.fusion.attention import GatedWriteback, check_collapsed
from ds_deblur.models.svrt.fusion.concat import FINITE, OperatorParams
from ds_deblur.models.svrt.fusion.pase import PASE_OPTIONS, pase_encoder

PASE_RESIDUAL_OPTIONS = PASE_OPTIONS + ("feature_chans", "alpha_init", "gate_bias_init", "init_gate_bias",
                                        "enable_diagnostics")


def _conv_relu_pair(in_chans: int, chans: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_chans, chans, kernel_size=3, padding=1), nn.ReLU(inplace=True),
                         nn.Conv2d(chans, chans, kernel_size=3, padding=1), nn.ReLU(inplace=True))


class PaseResidualFusion(GatedWriteback):
    """RGB ``(B, T, 3, H, W)`` and spike bins ``(B, T, spike_chans, H, W)`` -> ``(B, T, 3, H, W)``.

    Needs ``rgb_chans == out_chans == 3``. Options (default): those of the PASE encoder (``kernel_size`` 3,
    ``hidden_chans`` 32, ``normalize_kernel`` true); ``feature_chans``, falling back on ``hidden_chans`` then
    48 as in S-VRT; ``alpha_init`` (0.05), ``gate_bias_init`` alias ``init_gate_bias`` (-2.0),
    ``enable_diagnostics`` (false).
    """

    feature_modules = ("rgb_context_encoder", "pase", "fusion_body")

    def __init__(self, rgb_chans: int, spike_chans: int, out_chans: int, operator_params: Mapping[str, Any]) -> None:
        if (rgb_chans, out_chans) != (3, 3) or spike_chans <= 0:
            raise ConfigError(f"the pase_residual fusion operator needs rgb_chans=3, netG.fusion.out_chans=3 and "
                              f"spike_chans > 0, got {rgb_chans}, {out_chans} and {spike_chans}")
        params = OperatorParams(operator_params, "pase_residual", PASE_RESIDUAL_OPTIONS)
        chans = params.integer("feature_chans", "hidden_chans", default=48)
        alpha = params.real("alpha_init", default=0.05, rule=FINITE)
        gate_bias = params.real("gate_bias_init", "init_gate_bias", default=-2.0, rule=FINITE)
        super().__init__(params.flag("enable_diagnostics", default=False))
        self.rgb_chans, self.spike_chans, self.out_chans = rgb_chans, spike_chans, out_chans
        self.rgb_context_encoder = _conv_relu_pair(3, chans)
        self.pase = pase_encoder(params, spike_chans, chans)
        self.fusion_body = _conv_relu_pair(chans, chans)
        self.fusion_writeback_head = nn.ModuleDict({"delta": nn.Conv2d(chans, 3, kernel_size=1),
                                                    "gate": nn.Conv2d(chans, 3, kernel_size=1)})
        self.alpha = nn.Parameter(torch.full((1, 3, 1, 1), alpha))
        self.init_writeback(gate_bias)

    def forward(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        check_collapsed(rgb, spike, self.spike_chans)
        b, t, s, h, w = spike.shape
        pase = self.pase(spike.reshape(b * t, s, h, w))
        body = self.fusion_body(self.rgb_context_encoder(rgb.reshape(b * t, 3, h, w)) + pase)
        delta, gate_logits = (self.fusion_writeback_head[name](body).reshape(b, t, 3, h, w)
                              for name in ("delta", "gate"))
        return self.write_back(rgb, delta, gate_logits, {"pase_norm": (pase, 1), "body_norm": (body, 1)})
