"""S-VRT's ``mamba`` early-fusion operator: at each low-resolution pixel, Mamba mixes the spike bins into an update.

Collapsed frame contract: ``forward(rgb (B, N, 3, H, W), spike (B, N, S, H, W)) -> (B, N, 3, H, W)``. The RGB
frame and every spike bin are encoded to ``token_dim`` channels at ``1/token_stride`` of the resolution; at each
low-resolution pixel the S bin codes plus the RGB code form a sequence of S tokens that ``num_layers`` residual
Mamba blocks mix. The tokens' mean plus the RGB code is decoded into an update ``delta`` and a gate, both
upsampled bilinearly, and the output is ``rgb + alpha * sigmoid(gate) * delta``.

Parameter names, shapes and order are those of S-VRT's ``MambaFusionOperator`` built with mamba_ssm installed,
so its checkpoints load with ``strict=True``; ours runs on CPU too (see ``selective_scan``). This module also
holds what S-VRT's two Mamba operators share: the residual block, the Mamba options, the update heads' init.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any, ContextManager, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.fusion.concat import PARAMS_KEY, OperatorParams
from ds_deblur.models.svrt.selective_scan import Mamba

AMP_POLICIES = ("fp32", "autocast", "fp16", "bf16")
_POLICY_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
MAMBA_OPTIONS = ("token_dim", "model_dim", "token_stride", "d_state", "d_conv", "expand", "num_layers",
                 "token_chunk_size", "alpha_init", "gate_bias_init", "init_gate_bias", "enable_diagnostics",
                 "mamba_amp_policy")
# A NaN or infinite alpha_init or gate bias would only show up as a NaN loss.
FINITE = ("that is finite", math.isfinite)


def mamba_options(params: OperatorParams) -> dict[str, int]:
    """The Mamba layer's ``d_state`` (32), ``d_conv`` (4) and ``expand`` (2), S-VRT's defaults."""
    return {name: params.integer(name, default=default) for name, default in (("d_state", 32), ("d_conv", 4),
                                                                              ("expand", 2))}


def require_channels(operator: str, name: str, value: int, expected: int) -> None:
    """Refuse a channel count the operator's layers are not built for."""
    if value != expected:
        where = "netG.fusion.out_chans" if name == "out_chans" else name
        raise ConfigError(f"{where} must be {expected} for the {operator} fusion operator, got {value}")


def _amp_policy(operator_params: Mapping[str, Any]) -> str:
    value = operator_params.get("mamba_amp_policy", "fp32")
    policy = value.strip().lower() if isinstance(value, str) else value
    if policy not in AMP_POLICIES:
        raise ConfigError(f"{PARAMS_KEY}.mamba_amp_policy must be one of {', '.join(AMP_POLICIES)}, got {value!r}")
    return policy


class MambaBlock(nn.Module):
    """Pre-norm residual Mamba layer on token sequences ``(N, L, C)``: ``x + mamba(norm(x))``."""

    def __init__(self, dim: int, d_state: int, d_conv: int, expand: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mamba = Mamba(dim, d_state=d_state, d_conv=d_conv, expand=expand)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.mamba(self.norm(tokens))


def init_writeback(delta: nn.Conv2d, gate: nn.Conv2d, gate_bias: float) -> None:
    """S-VRT's start for the update heads: a near-zero update behind a mostly closed gate."""
    nn.init.normal_(delta.weight, std=1e-3)
    nn.init.zeros_(delta.bias)
    nn.init.normal_(gate.weight, std=1e-3)
    nn.init.constant_(gate.bias, gate_bias)


def check_inputs(rgb: torch.Tensor, spike: torch.Tensor) -> None:
    """Both inputs 5-D, sharing batch, frames, height and width; the RGB with 3 channels."""
    if rgb.dim() != 5 or spike.dim() != 5:
        raise ValueError(f"fusion expects rgb (B, N, 3, H, W) and spike (B, N, S, H, W), "
                         f"got {tuple(rgb.shape)} and {tuple(spike.shape)}")
    if rgb.shape[2] != 3 or rgb.shape[:2] + rgb.shape[3:] != spike.shape[:2] + spike.shape[3:]:
        raise ValueError(f"fusion expects rgb (B, N, 3, H, W) and spike (B, N, S, H, W) with the same B, N, H, W, "
                         f"got {tuple(rgb.shape)} and {tuple(spike.shape)}")


def _autocast_off(device: torch.device) -> ContextManager:
    # S-VRT turns autocast off only on the two device types it knows.
    return torch.autocast(device.type, enabled=False) if device.type in ("cuda", "cpu") else nullcontext()


class MambaFusion(nn.Module):
    """S-VRT's ``MambaFusionOperator``; see the module docstring."""

    expects_structured_early = True
    frame_contract = "collapsed"
    # What S-VRT's writeback_only warm-up stage holds back (TRAIN.HEAD_ONLY_STEPS).
    feature_modules = ("rgb_context_encoder", "spike_token_encoder", "mamba_token_mixer")

    def __init__(self, rgb_chans: int, spike_chans: int, out_chans: int, operator_params: Mapping[str, Any]) -> None:
        super().__init__()
        # Built for one spike bin per encoder call; the bins of a frame arrive as the sequence axis in forward.
        for name, value, expected in (("rgb_chans", rgb_chans, 3), ("spike_chans", spike_chans, 1),
                                      ("out_chans", out_chans, 3)):
            require_channels("mamba", name, value, expected)
        self.rgb_chans, self.spike_chans, self.out_chans = rgb_chans, spike_chans, out_chans
        params = OperatorParams(operator_params, "mamba", MAMBA_OPTIONS)
        dim = params.integer("token_dim", "model_dim", default=48)
        stride = params.integer("token_stride", default=4)
        options = mamba_options(params)
        num_layers = params.integer("num_layers", default=3, minimum=0)
        self.token_chunk_size = params.integer("token_chunk_size", default=0, minimum=0)
        alpha_init = params.real("alpha_init", default=0.05, rule=FINITE)
        gate_bias = params.real("gate_bias_init", "init_gate_bias", default=-2.0, rule=FINITE)
        # Read so that S-VRT configs load; its diagnostics are not collected here.
        params.flag("enable_diagnostics", default=False)
        self.mamba_amp_policy = _amp_policy(operator_params)

        self.rgb_context_encoder = nn.Sequential(
            nn.Conv2d(3, dim, 3, stride=stride, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True))
        self.spike_token_encoder = nn.Sequential(
            nn.Conv2d(1, dim, 3, stride=stride, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 3, padding=1))
        self.mamba_token_mixer = nn.ModuleList(MambaBlock(dim, **options) for _ in range(num_layers))
        self.fusion_writeback_head = nn.ModuleDict({
            "body": nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.ReLU(inplace=True)),
            "delta": nn.Conv2d(dim, 3, 1),
            "gate": nn.Conv2d(dim, 3, 1),
        })
        self.alpha = nn.Parameter(torch.full((1, 3, 1, 1), alpha_init))
        init_writeback(self.fusion_writeback_head["delta"], self.fusion_writeback_head["gate"], gate_bias)

    def forward(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        check_inputs(rgb, spike)
        b, n, _, h, w = rgb.shape
        bins = spike.shape[2]
        rgb_low = self.rgb_context_encoder(rgb.reshape(b * n, 3, h, w))
        dim, low_h, low_w = rgb_low.shape[1:]
        rgb_low = rgb_low.reshape(b, n, dim, low_h, low_w)
        spike_low = self.spike_token_encoder(spike.reshape(b * n * bins, 1, h, w))
        # One sequence of `bins` tokens per (clip, frame, low-resolution pixel), the RGB code added to every token.
        spike_tokens = spike_low.reshape(b, n, bins, dim, low_h, low_w).permute(0, 1, 4, 5, 2, 3)
        rgb_tokens = rgb_low.permute(0, 1, 3, 4, 2).unsqueeze(-2)
        seq = (spike_tokens + rgb_tokens).reshape(-1, bins, dim)
        pooled = self._mix(seq).mean(dim=1).reshape(b, n, low_h, low_w, dim).permute(0, 1, 4, 2, 3)
        body = self.fusion_writeback_head["body"]((pooled + rgb_low).reshape(b * n, dim, low_h, low_w))
        delta, gate = (F.interpolate(self.fusion_writeback_head[head](body), size=(h, w), mode="bilinear",
                                     align_corners=False).reshape(b, n, 3, h, w) for head in ("delta", "gate"))
        return rgb + self.alpha.view(1, 1, 3, 1, 1) * torch.sigmoid(gate) * delta

    def _mix(self, seq: torch.Tensor) -> torch.Tensor:
        """The token mixer under ``mamba_amp_policy``, in chunks of ``token_chunk_size`` sequences; seq's dtype out."""
        policy = self.mamba_amp_policy
        # fp32 runs with autocast off so the scan's inputs stay float32; fp16/bf16 cast and let autocast be.
        context = _autocast_off(seq.device) if policy == "fp32" else nullcontext()
        chunk = self.token_chunk_size if self.token_chunk_size > 0 else seq.shape[0]
        with context:
            mixer_in = seq.to(_POLICY_DTYPES[policy]) if policy in _POLICY_DTYPES else seq
            mixed = [self._mixer(part.contiguous()) for part in mixer_in.split(chunk)]
        return torch.cat(mixed).to(seq.dtype)

    def _mixer(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.mamba_token_mixer:
            tokens = block(tokens)
        return tokens
