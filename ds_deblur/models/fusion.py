"""Per-pixel temporal attention: the blocks of the spike self attention and of the RGB/spike fusion.

Features are 5-D ``(B, C, T, H, W)`` as inside the VRT backbone. Every pixel is an independent sequence of ``T``
tokens of width ``C``; all pixels go through one attention call (``attention.attend``) as one batch, cut into
chunks of at most ``chunk_pixels`` pixels so the transient memory of a block stays bounded at full resolution. Parameter names
are the original S-VRT model's, so its checkpoints load with ``strict=True`` and ours load into its model.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ds_deblur.models.attention import attend

# CUDA's memory-efficient and flash SDPA kernels put the batch on a grid axis capped at 2**16 - 1 blocks
# (pytorch/pytorch#146704), so no chunk may hold more pixels than that whatever the config says.
_SDPA_MAX_BATCH = 65535


class TemporalMHA(nn.Module):
    """Multi-head attention along T for token batches ``(N, T, C)``.

    Weights keep ``nn.MultiheadAttention``'s layout (packed ``in_proj_weight``/``in_proj_bias``, ``out_proj``),
    the layout of the original project's checkpoints; the product itself runs in ``attention.attend``.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads; "
                             "change the channels (MODEL.CHANNELS_PER_SCALE) or HEADS (MODEL.SPIKE_TSA/FUSE)")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, context: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``bias`` (T, T), added to the attention logits (query frame, key frame), or None."""
        dim = query.shape[-1]
        if query is context:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q = F.linear(query, self.in_proj_weight[:dim], self.in_proj_bias[:dim])
            k, v = F.linear(context, self.in_proj_weight[dim:], self.in_proj_bias[dim:]).chunk(2, dim=-1)
        n, t = query.shape[:2]
        q, k, v = (x.reshape(n, -1, self.heads, dim // self.heads).transpose(1, 2) for x in (q, k, v))
        out = attend(q, k, v, None if bias is None else bias.to(q.dtype))
        return self.out_proj(out.transpose(1, 2).reshape(n, t, dim))


class FeedForward(nn.Sequential):
    """Linear -> GELU -> Linear, hidden width ``dim * mlp_ratio``."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        hidden = int(dim * mlp_ratio)
        super().__init__(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))


def to_pixel_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B*H*W, T, C)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 3, 4, 2, 1).reshape(b * h * w, t, c)


def from_pixel_tokens(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_pixel_tokens` for a feature shaped like ``like``."""
    b, c, t, h, w = like.shape
    return tokens.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2).contiguous()


class PixelTemporalBlock(nn.Module):
    """A transformer block over time applied independently at every pixel, in chunks of at most ``chunk_pixels``
    pixels. Subclasses hold the layers (under the original S-VRT model's names) and define ``_tokens_forward``
    on token batches ``(N, T, C)``."""

    cross: bool = False

    def __init__(self, chunk_pixels: int) -> None:
        super().__init__()
        if chunk_pixels < 1:
            raise ValueError(f"chunk_pixels must be >= 1, got {chunk_pixels}")
        self.chunk_pixels = min(chunk_pixels, _SDPA_MAX_BATCH)

    def _tokens_forward(self, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x, context: (B, C, T, H, W) -> (B, C, T, H, W); ``context`` only (and always) for a cross block."""
        if (context is None) == self.cross:
            raise ValueError("a cross-attention block needs a context tensor and a self-attention block takes none")
        if context is not None and context.shape != x.shape:
            raise ValueError(f"cross attention needs matching shapes, got query {tuple(x.shape)} "
                             f"and context {tuple(context.shape)}")
        tokens = to_pixel_tokens(x)
        ctx_tokens = None if context is None else to_pixel_tokens(context)
        outs = [
            self._tokens_forward(tokens[s:s + self.chunk_pixels],
                                 None if ctx_tokens is None else ctx_tokens[s:s + self.chunk_pixels])
            for s in range(0, tokens.shape[0], self.chunk_pixels)
        ]
        return from_pixel_tokens(torch.cat(outs) if len(outs) > 1 else outs[0], like=x)


class TemporalSelfAttnBlock(PixelTemporalBlock):
    """Pre-norm self attention over time: ``x = x + attn(ln1(x)); x = x + mlp(ln2(x))`` (the original's
    ``spike_temporal_sa.blocks.N`` layout)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, chunk_pixels: int) -> None:
        super().__init__(chunk_pixels)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = TemporalMHA(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, mlp_ratio)

    def _tokens_forward(self, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        q = self.ln1(x)
        x = x + self.attn(q, q)
        return x + self.mlp(self.ln2(x))


def frame_distance_bias(frames: int, penalty: float, device: torch.device) -> Optional[torch.Tensor]:
    """Attention logit bias (T, T): ``-penalty * |t_query - t_key|``, so that a frame weighs the other frames'
    tokens down by ``exp(-penalty)`` per frame of distance; ``inf`` keeps each frame to its own. None for 0."""
    if penalty == 0:
        return None
    t = torch.arange(frames, device=device)
    distance = (t[:, None] - t[None, :]).abs().float()
    return torch.where(distance == 0, torch.zeros(()), -penalty * distance)  # 0 * inf would be nan


class CrossAttention(nn.Module):
    """Holds the multi-head attention of a fusion block as ``attn`` (the original's ``attn.attn`` names)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.attn = TemporalMHA(dim, heads)

    def forward(self, query: torch.Tensor, context: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.attn(query, context, bias)


class TemporalCrossAttnFuse(PixelTemporalBlock):
    """Fuses spike features into an RGB stage output: queries from RGB, keys/values from spike, then FFN:
    ``x = x + attn(ln_q(x), ln_kv(spike)); x = x + ffn(ln_ffn(x))`` (the original's ``fuse_blocks.N`` layout).

    ``forward(rgb, spike)`` with both ``(B, C, T, H, W)`` returns the fused RGB feature of the same shape.

    Attention has no notion of time: with ``frame_distance_penalty`` 0 (the original) an RGB frame tells the spike
    features of its own exposure from those of the clip's other frames only by their content, and from the
    start of training each frame gets about the clip's mean. A positive penalty biases the logits by
    ``-penalty * |t_rgb - t_spike|`` (``frame_distance_bias``), a prior towards the frame's own exposure; no
    parameters, so checkpoints load either way.
    """

    cross = True

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 2.0, chunk_pixels: int = 16384,
                 frame_distance_penalty: float = 0.0) -> None:
        super().__init__(chunk_pixels)
        if not frame_distance_penalty >= 0:
            raise ValueError(f"frame_distance_penalty must be >= 0, got {frame_distance_penalty}")
        self.frame_distance_penalty = frame_distance_penalty
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.ln_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio)

    def _tokens_forward(self, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        bias = frame_distance_bias(x.shape[1], self.frame_distance_penalty, x.device)
        x = x + self.attn(self.ln_q(x), self.ln_kv(context), bias)
        return x + self.ffn(self.ln_ffn(x))


class MultiScaleFuse(nn.Module):
    """One ``TemporalCrossAttnFuse`` per fused scale, as ``fuse_blocks`` (the original's ``cross_attn_fuse``);
    ``fuse[i]`` is scale i's block."""

    def __init__(self, channels_per_scale: Sequence[int], **block: Any) -> None:
        super().__init__()
        self.fuse_blocks = nn.ModuleList(TemporalCrossAttnFuse(c, **block) for c in channels_per_scale)

    def __getitem__(self, index: int) -> TemporalCrossAttnFuse:
        return self.fuse_blocks[index]

    def __len__(self) -> int:
        return len(self.fuse_blocks)

    def forward(self, index: int, rgb: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
        return self.fuse_blocks[index](rgb, spike)
