"""S-VRT's ``dual_scale_temporal_mamba`` early-fusion operator: Mamba along the spike bins, then along the frames.

Collapsed frame contract: ``forward(rgb (B, N, 3, H, W), spike (B, N, S, H, W)) -> (B, N, 3, H, W)`` with S fixed
at construction. Every spike bin is projected to ``token_dim`` channels at ``1/patch_stride`` of the resolution.
The local stage runs Mamba over the S bins of each low-resolution pixel of each frame; a softmax over the bins
(``summary_gate``) pools them into one token per frame, and the global stage runs Mamba over the N frames of each
pixel. That context, upsampled bilinearly and added to a full-resolution RGB encoding, is decoded into an update
``delta`` and a gate: the output is ``rgb + alpha * sigmoid(gate) * delta``.

Parameter names, shapes and order are those of S-VRT's ``DualScaleTemporalMambaFusionOperator`` built with
mamba_ssm installed, so its checkpoints load with ``strict=True``; ours runs on CPU too.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.fusion.concat import OperatorParams
from ds_deblur.models.svrt.fusion.mamba import (FINITE, MambaBlock, check_inputs, init_writeback, mamba_options,
                                                require_channels)

DUAL_SCALE_OPTIONS = ("token_dim", "patch_stride", "d_state", "d_conv", "expand", "local_layers", "global_layers",
                      "alpha_init", "gate_bias_init", "enable_diagnostics")


class ResidualMambaStage(nn.Module):
    """``depth`` residual Mamba blocks, then a residual pre-norm feed-forward (width 2x, GELU) on ``(N, L, C)``."""

    def __init__(self, dim: int, depth: int, options: Mapping[str, int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MambaBlock(dim, **options) for _ in range(depth))
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            seq = block(seq)
        return seq + self.ffn(self.ffn_norm(seq))


class DualScaleTemporalMambaFusion(nn.Module):
    """S-VRT's ``DualScaleTemporalMambaFusionOperator``; see the module docstring."""

    expects_structured_early = True
    frame_contract = "collapsed"

    def __init__(self, rgb_chans: int, spike_chans: int, out_chans: int, operator_params: Mapping[str, Any]) -> None:
        super().__init__()
        require_channels("dual_scale_temporal_mamba", "rgb_chans", rgb_chans, 3)
        require_channels("dual_scale_temporal_mamba", "out_chans", out_chans, 3)
        if spike_chans <= 0:
            raise ConfigError(f"spike_chans must be positive for the dual_scale_temporal_mamba fusion operator, "
                              f"got {spike_chans}")
        self.rgb_chans, self.spike_chans, self.out_chans = rgb_chans, spike_chans, out_chans
        params = OperatorParams(operator_params, "dual_scale_temporal_mamba", DUAL_SCALE_OPTIONS)
        dim = params.integer("token_dim", default=48)
        stride = params.integer("patch_stride", default=4)
        options = mamba_options(params)
        local_layers = params.integer("local_layers", default=1, minimum=0)
        global_layers = params.integer("global_layers", default=1, minimum=0)
        alpha_init = params.real("alpha_init", default=0.05, rule=FINITE)
        gate_bias = params.real("gate_bias_init", default=-2.0, rule=FINITE)
        # Read so that S-VRT configs load; its diagnostics are not collected here.
        params.flag("enable_diagnostics", default=False)

        self.spike_projector = nn.Sequential(
            nn.Conv2d(1, dim, 3, stride=stride, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1))
        self.rgb_context_encoder = nn.Sequential(
            nn.Conv2d(3, dim, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True))
        self.local_stage = ResidualMambaStage(dim, local_layers, options)
        self.summary_gate = nn.Linear(dim, 1)
        self.global_stage = ResidualMambaStage(dim, global_layers, options)
        self.fusion_body = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True))
        self.delta_head = nn.Conv2d(dim, 3, 1)
        self.gate_head = nn.Conv2d(dim, 3, 1)
        self.alpha = nn.Parameter(torch.full((1, 3, 1, 1), alpha_init))
        init_writeback(self.delta_head, self.gate_head, gate_bias)

    def forward(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        check_inputs(rgb, spike)
        if spike.shape[2] != self.spike_chans:
            raise ValueError(f"dual_scale_temporal_mamba was built for {self.spike_chans} spike bins, "
                             f"got {spike.shape[2]}")
        b, n, _, h, w = rgb.shape
        bins = self.spike_chans
        spike_low = self.spike_projector(spike.reshape(b * n * bins, 1, h, w))
        dim, low_h, low_w = spike_low.shape[1:]
        # Local scale: one sequence over the bins per (clip, frame, low-resolution pixel).
        local = spike_low.reshape(b, n, bins, dim, low_h * low_w).permute(0, 1, 4, 2, 3).reshape(-1, bins, dim)
        local = self.local_stage(local)
        summary = (torch.softmax(self.summary_gate(local), dim=1) * local).sum(dim=1)
        # Global scale: one sequence over the frames per (clip, low-resolution pixel).
        frames = summary.reshape(b, n, low_h * low_w, dim).transpose(1, 2).reshape(-1, n, dim)
        context = self.global_stage(frames).reshape(b, low_h * low_w, n, dim).permute(0, 2, 3, 1)
        context = F.interpolate(context.reshape(b * n, dim, low_h, low_w), size=(h, w), mode="bilinear",
                                align_corners=False)
        fused = self.fusion_body(self.rgb_context_encoder(rgb.reshape(b * n, 3, h, w)) + context)
        delta = self.delta_head(fused).reshape(b, n, 3, h, w)
        gate = self.gate_head(fused).reshape(b, n, 3, h, w)
        return rgb + self.alpha.view(1, 1, 3, 1, 1) * torch.sigmoid(gate) * delta
