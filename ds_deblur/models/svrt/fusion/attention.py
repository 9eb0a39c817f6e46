"""S-VRT's ``attention`` fusion operator, and the gated write-back it shares with ``pase_residual``.

Both are ``collapsed`` early operators: they take the RGB frames ``(B, T, 3, H, W)`` with their spike bins
``(B, T, S, H, W)`` and return ``rgb + alpha * sigmoid(gate) * delta`` ``(B, T, 3, H, W)``. The write-back
weights start near zero (std 1e-3) and ``alpha`` small, so a new operator barely changes its RGB input.

``attention``: RGB and every spike bin are encoded to tokens on a grid ``token_stride`` times coarser; at each
grid cell and frame the ``S`` spike tokens (plus the RGB token) go through pre-norm transformer blocks, are
averaged, added to the RGB token and decoded to ``delta`` and ``gate`` logits, upsampled bilinearly to full size.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.fusion.concat import FINITE, PARAMS_KEY, OperatorParams

WARMUP_STAGES = ("full", "writeback_only", "token_mixer")
ATTENTION_OPTIONS = ("token_dim", "model_dim", "token_stride", "num_layers", "num_heads", "mlp_ratio", "attn_drop",
                     "proj_drop", "alpha_init", "gate_bias_init", "init_gate_bias", "enable_diagnostics")
# CUDA's memory-efficient and flash SDPA kernels put the batch on a grid axis capped at 2**16 - 1 blocks
# (pytorch/pytorch#146704); one token sequence per grid cell and frame exceeds that at full resolution.
_MAX_SEQUENCES = 65535
_DROPOUT = ("in [0, 1)", lambda v: 0 <= v < 1)
_POSITIVE = ("that is finite and > 0", lambda v: 0 < v < math.inf)


def check_collapsed(rgb: torch.Tensor, spike: torch.Tensor, spike_chans: Optional[int] = None) -> None:
    """Raise unless ``rgb`` is ``(B, T, 3, H, W)`` and ``spike`` ``(B, T, S, H, W)`` (``S == spike_chans`` if
    given)."""
    if rgb.dim() != 5 or spike.dim() != 5 or rgb.shape[2] != 3:
        raise ValueError(f"collapsed fusion takes rgb (B, T, 3, H, W) and spike (B, T, S, H, W), "
                         f"got {tuple(rgb.shape)} and {tuple(spike.shape)}")
    if rgb.shape[:2] + rgb.shape[3:] != spike.shape[:2] + spike.shape[3:]:
        raise ValueError(f"rgb {tuple(rgb.shape)} and spike {tuple(spike.shape)} must share batch, time and size")
    if spike_chans is not None and spike.shape[2] != spike_chans:
        raise ValueError(f"expected {spike_chans} spike channels, got {spike.shape[2]}")


class GatedWriteback(nn.Module):
    """Base of the collapsed operators: warmup stages, diagnostics and the final gated update.

    Subclasses register their layers (in S-VRT's order), including ``fusion_writeback_head`` with ``delta`` and
    ``gate`` 1x1 convs and ``alpha`` ``(1, 3, 1, 1)``, and name in ``feature_modules`` the layers that the
    ``writeback_only`` warmup stage freezes.
    """

    expects_structured_early = True
    frame_contract = "collapsed"
    feature_modules: tuple[str, ...] = ()

    def __init__(self, enable_diagnostics: bool) -> None:
        super().__init__()
        self.enable_diagnostics = enable_diagnostics
        self._warmup_stage = "full"
        self._diagnostics: dict[str, Any] = {"warmup_stage": "full"}

    def init_writeback(self, gate_bias: float) -> None:
        head = self.fusion_writeback_head
        nn.init.normal_(head["delta"].weight, std=1e-3)
        nn.init.zeros_(head["delta"].bias)
        nn.init.normal_(head["gate"].weight, std=1e-3)
        nn.init.constant_(head["gate"].bias, gate_bias)

    def set_warmup_stage(self, stage: Optional[str]) -> None:
        """S-VRT's fusion warmup: ``writeback_only`` trains only the write-back head and ``alpha``; ``full`` and
        ``token_mixer`` train everything."""
        name = "full" if stage in (None, "") else str(stage).strip().lower()
        if name not in WARMUP_STAGES:
            raise ValueError(f"fusion warmup stage must be one of {', '.join(WARMUP_STAGES)}, got {stage!r}")
        self._warmup_stage = name
        for module in self.feature_modules:
            getattr(self, module).requires_grad_(name != "writeback_only")
        self.fusion_writeback_head.requires_grad_(True)
        self.alpha.requires_grad_(True)

    def diagnostics(self) -> dict[str, Any]:
        """Scalars of the last forward for the log; only ``warmup_stage`` unless ``enable_diagnostics``."""
        return dict(self._diagnostics)

    def write_back(self, rgb: torch.Tensor, delta: torch.Tensor, gate_logits: torch.Tensor,
                   feature_norms: Mapping[str, tuple[torch.Tensor, int]]) -> torch.Tensor:
        """``rgb + alpha * sigmoid(gate_logits) * delta`` on ``(B, T, 3, H, W)``; ``feature_norms`` maps a
        diagnostic's name to the tensor whose mean L2 norm along the given dim it reports."""
        gate = torch.sigmoid(gate_logits)
        update = self.alpha.view(1, 1, 3, 1, 1) * gate * delta
        self._diagnostics = {"warmup_stage": self._warmup_stage}
        if self.enable_diagnostics:
            stats = {name: x.detach().float().norm(dim=dim).mean() for name, (x, dim) in feature_norms.items()}
            stats.update(delta_norm=delta.detach().float().abs().mean(), gate_mean=gate.detach().float().mean(),
                         effective_update_norm=update.detach().float().abs().mean())
            self._diagnostics = {**{k: float(v.item()) for k, v in stats.items()}, **self._diagnostics}
        return rgb + update


class TokenMixerBlock(nn.Module):
    """Pre-norm transformer block on token sequences ``(N, S, dim)``; the MLP is at least ``dim`` wide."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, attn_drop: float, proj_drop: float) -> None:
        super().__init__()
        hidden = max(dim, int(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=attn_drop, batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(proj_drop), nn.Linear(hidden, dim),
                                 nn.Dropout(proj_drop))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.proj_drop(self.attn(y, y, y, need_weights=False)[0])
        return x + self.mlp(self.norm2(x))


def _token_encoder(in_chans: int, dim: int, stride: int, final_relu: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_chans, dim, kernel_size=3, stride=stride, padding=1), nn.ReLU(inplace=True),
              nn.Conv2d(dim, dim, kernel_size=3, padding=1)]
    if final_relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class AttentionFusion(GatedWriteback):
    """RGB ``(B, T, 3, H, W)`` and spike bins ``(B, T, S, H, W)`` (any ``S``) -> ``(B, T, 3, H, W)``.

    Needs ``rgb_chans == 3``, ``spike_chans == 1`` (one encoder shared by all bins) and ``out_chans == 3``.
    Options (default): ``token_dim`` alias ``model_dim`` (48), ``token_stride`` (4), ``num_layers`` (3),
    ``num_heads`` (4, dividing ``token_dim``), ``mlp_ratio`` (2.0), ``attn_drop`` and ``proj_drop`` (0.0),
    ``alpha_init`` (0.05), ``gate_bias_init`` alias ``init_gate_bias`` (-2.0), ``enable_diagnostics`` (false).
    """

    feature_modules = ("rgb_context_encoder", "spike_token_encoder", "attention_token_mixer")

    def __init__(self, rgb_chans: int, spike_chans: int, out_chans: int, operator_params: Mapping[str, Any]) -> None:
        if (rgb_chans, spike_chans, out_chans) != (3, 1, 3):
            raise ConfigError(f"the attention fusion operator needs rgb_chans=3, spike_chans=1 and "
                              f"netG.fusion.out_chans=3, got {rgb_chans}, {spike_chans} and {out_chans}")
        params = OperatorParams(operator_params, "attention", ATTENTION_OPTIONS)
        dim = params.integer("token_dim", "model_dim", default=48)
        stride = params.integer("token_stride", default=4)
        layers = params.integer("num_layers", default=3, minimum=0)
        heads = params.integer("num_heads", default=4)
        if dim % heads:
            raise ConfigError(f"{PARAMS_KEY}.num_heads ({heads}) must divide token_dim ({dim})")
        mlp_ratio = params.real("mlp_ratio", default=2.0, rule=_POSITIVE)
        attn_drop = params.real("attn_drop", default=0.0, rule=_DROPOUT)
        proj_drop = params.real("proj_drop", default=0.0, rule=_DROPOUT)
        alpha = params.real("alpha_init", default=0.05, rule=FINITE)
        gate_bias = params.real("gate_bias_init", "init_gate_bias", default=-2.0, rule=FINITE)
        super().__init__(params.flag("enable_diagnostics", default=False))
        self.rgb_chans, self.spike_chans, self.out_chans = rgb_chans, spike_chans, out_chans
        self.rgb_context_encoder = _token_encoder(3, dim, stride, final_relu=True)
        self.spike_token_encoder = _token_encoder(1, dim, stride, final_relu=False)
        self.attention_token_mixer = nn.ModuleList(
            TokenMixerBlock(dim, heads, mlp_ratio, attn_drop, proj_drop) for _ in range(layers))
        self.fusion_writeback_head = nn.ModuleDict({
            "body": nn.Sequential(nn.Conv2d(dim, dim, kernel_size=3, padding=1), nn.ReLU(inplace=True)),
            "delta": nn.Conv2d(dim, 3, kernel_size=1),
            "gate": nn.Conv2d(dim, 3, kernel_size=1),
        })
        self.alpha = nn.Parameter(torch.full((1, 3, 1, 1), alpha))
        self.init_writeback(gate_bias)

    def forward(self, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        check_collapsed(rgb, spike)
        b, t, s, h, w = spike.shape
        rgb_low = self.rgb_context_encoder(rgb.reshape(b * t, 3, h, w))
        dim, gh, gw = rgb_low.shape[1:]
        spike_low = self.spike_token_encoder(spike.reshape(b * t * s, 1, h, w)).reshape(b * t, s, dim, gh, gw)
        # one sequence of S spike tokens per frame and grid cell, each offset by that cell's RGB token
        spike_tokens = spike_low.permute(0, 3, 4, 1, 2).reshape(-1, s, dim)
        rgb_tokens = rgb_low.permute(0, 2, 3, 1).reshape(-1, 1, dim)
        mixed = torch.cat([self._mix(chunk) for chunk in (spike_tokens + rgb_tokens).split(_MAX_SEQUENCES)])
        pooled = mixed.mean(dim=1).reshape(b * t, gh, gw, dim).permute(0, 3, 1, 2)
        body = self.fusion_writeback_head["body"](pooled + rgb_low)
        delta, gate_logits = (self._upsample(self.fusion_writeback_head[name](body), b, t, (h, w))
                              for name in ("delta", "gate"))
        return self.write_back(rgb, delta, gate_logits,
                               {"token_norm": (spike_tokens, -1), "attention_norm": (mixed, -1)})

    def _mix(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.attention_token_mixer:
            tokens = block(tokens)
        return tokens

    @staticmethod
    def _upsample(low: torch.Tensor, b: int, t: int, size: tuple[int, int]) -> torch.Tensor:
        full = F.interpolate(low, size=size, mode="bilinear", align_corners=False)
        return full.reshape(b, t, 3, *size)
