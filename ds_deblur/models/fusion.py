"""Per-pixel temporal attention: the block shared by the spike self attention and the RGB/spike fusion.

Features are 5-D ``(B, C, T, H, W)`` as inside the VRT backbone. Every pixel is an independent sequence of ``T``
tokens of width ``C``; all pixels go through ``scaled_dot_product_attention`` as one batch, cut into chunks of at
most ``chunk_pixels`` pixels so the transient memory of a block stays bounded at full resolution.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

# CUDA's memory-efficient and flash SDPA kernels put the batch on a grid axis capped at 2**16 - 1 blocks
# (pytorch/pytorch#146704), so no chunk may hold more pixels than that whatever the config says.
_SDPA_MAX_BATCH = 65535


class TemporalMHA(nn.Module):
    """Multi-head attention along T for token batches ``(N, T, C)``.

    Weights keep ``nn.MultiheadAttention``'s layout (packed ``in_proj_weight``/``in_proj_bias``, ``out_proj``),
    the layout of the original project's checkpoints; the product itself runs in SDPA.
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

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dim = query.shape[-1]
        if query is context:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            q = F.linear(query, self.in_proj_weight[:dim], self.in_proj_bias[:dim])
            k, v = F.linear(context, self.in_proj_weight[dim:], self.in_proj_bias[dim:]).chunk(2, dim=-1)
        n, t = query.shape[:2]
        q, k, v = (x.reshape(n, -1, self.heads, dim // self.heads).transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
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


class TemporalAttnBlock(nn.Module):
    """Pre-norm transformer block over time, applied independently at every pixel.

    ``x = x + attn(norm_q(x), norm_kv(context)); x = x + ffn(norm_ffn(x))``. Without ``cross`` the context is
    ``x`` itself (self attention, one norm); with ``cross`` the keys/values come from a second feature map of
    the same shape, normalised by their own LayerNorm.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float, chunk_pixels: int, cross: bool) -> None:
        super().__init__()
        if chunk_pixels < 1:
            raise ValueError(f"chunk_pixels must be >= 1, got {chunk_pixels}")
        self.chunk_pixels = min(chunk_pixels, _SDPA_MAX_BATCH)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim) if cross else None
        self.attn = TemporalMHA(dim, heads)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, mlp_ratio)

    def _tokens_forward(self, x: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        q = self.norm_q(x)
        kv = q if self.norm_kv is None else self.norm_kv(context)
        x = x + self.attn(q, kv)
        return x + self.ffn(self.norm_ffn(x))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x, context: (B, C, T, H, W) -> (B, C, T, H, W); ``context`` only (and always) for a cross block."""
        if (context is None) != (self.norm_kv is None):
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


class TemporalCrossAttnFuse(TemporalAttnBlock):
    """Fuses spike features into an RGB stage output: queries from RGB, keys/values from spike, then FFN.

    ``forward(rgb, spike)`` with both ``(B, C, T, H, W)`` returns the fused RGB feature of the same shape.
    """

    def __init__(self, dim: int, heads: int = 4, mlp_ratio: float = 2.0, chunk_pixels: int = 16384) -> None:
        super().__init__(dim, heads, mlp_ratio, chunk_pixels, cross=True)
