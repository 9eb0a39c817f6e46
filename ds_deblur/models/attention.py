"""VRT's temporal mutual self attention (TMSA) in 3-D windows, on ``scaled_dot_product_attention``.

Layout inside this module is channels-last: features (B, D, H, W, C), windows (B * nW, N, C) with N = wd * wh * ww
tokens ordered (d, h, w). Shifted windows use a cyclic roll; only the windows that straddle the wrap-around need
a mask, and those masks come in at most seven shapes (last window along any subset of the shifted axes). So the
attention runs once over all windows with at most the (heads, N, N) position bias, and only the straddling windows
are recomputed with their mask: no (windows, heads, N, N) tensor is ever built.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import Tensor

Size3 = tuple[int, int, int]

MASK_VALUE = -100.0  # the official additive mask value (not -inf); kept so masked logits match exactly
# CUDA's fused SDPA kernels put the batch on a grid axis capped at 65535 blocks; full HD frames have more windows.
MAX_SDPA_BATCH = 32768
# Logits elements per chunk of explicit attention: 16 MiB in fp32, under glibc's largest mmap threshold (32 MiB).
EXPLICIT_CHUNK_ELEMENTS = 1 << 22


def window_partition(x: Tensor, window_size: Sequence[int]) -> Tensor:
    """(B, D, H, W, C) -> (B * nW, wd * wh * ww, C); windows in (B, D/wd, H/wh, W/ww) order."""
    b, d, h, w, c = x.shape
    wd, wh, ww = window_size
    x = x.view(b, d // wd, wd, h // wh, wh, w // ww, ww, c)
    return x.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(-1, wd * wh * ww, c)


def window_reverse(windows: Tensor, window_size: Sequence[int], b: int, d: int, h: int, w: int) -> Tensor:
    """Inverse of :func:`window_partition`: (B * nW, N, C) -> (B, D, H, W, C)."""
    wd, wh, ww = window_size
    x = windows.view(b, d // wd, h // wh, w // ww, wd, wh, ww, -1)
    return x.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b, d, h, w, -1)


def get_window_size(size: Sequence[int], window_size: Sequence[int],
                    shift_size: Sequence[int]) -> tuple[Size3, Size3]:
    """A window never exceeds the input: along an axis no longer than the window it covers the axis, unshifted."""
    ws, ss = list(window_size), list(shift_size)
    for i, n in enumerate(size):
        if n <= window_size[i]:
            ws[i], ss[i] = n, 0
    return tuple(ws), tuple(ss)  # type: ignore[return-value]


def relative_position_index(window_size: Sequence[int]) -> Tensor:
    """(N, N) index into the (2wd-1)(2wh-1)(2ww-1) relative position bias table, for tokens ordered (d, h, w)."""
    wd, wh, ww = window_size
    coords = torch.stack(torch.meshgrid(torch.arange(wd), torch.arange(wh), torch.arange(ww), indexing="ij"))
    coords = coords.flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + wd - 1) * (2 * wh - 1) * (2 * ww - 1) + (rel[1] + wh - 1) * (2 * ww - 1) + (rel[2] + ww - 1)


def sine_position_encoding(hw: Sequence[int], num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """DETR-style normalised 2-D sine encoding: (1, h * w, 2 * num_pos_feats), y features first, then x.

    Within each half the features interleave sin and cos of the same frequency.
    """
    h, w = hw
    eps, scale = 1e-6, 2 * math.pi
    y = torch.arange(1, h + 1, dtype=torch.float32).view(h, 1).expand(h, w) / (h + eps) * scale
    x = torch.arange(1, w + 1, dtype=torch.float32).view(1, w).expand(h, w) / (w + eps) * scale
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)

    def encode(pos: Tensor) -> Tensor:
        pos = pos[..., None] / dim_t
        return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)

    return torch.cat((encode(y), encode(x)), dim=-1).view(1, h * w, 2 * num_pos_feats)


@dataclass(frozen=True)
class ShiftMasks:
    """Masks of the shifted windows that straddle the cyclic wrap-around.

    ``groups``: (window indices in window-partition order, additive (N, N) mask) per window kind;
    ``first_frame``: the same restricted to the first frame's tokens (what mutual attention uses), all-zero
    masks dropped.
    """

    num_windows: int
    groups: tuple[tuple[Tensor, Tensor], ...]
    first_frame: tuple[tuple[Tensor, Tensor], ...]


def _region_ids(n: int, window: int, shift: int) -> Tensor:
    ids = torch.zeros(n, dtype=torch.long)
    if shift > 0:  # three regions: untouched, shifted-in-window, wrapped-around
        ids[n - window:] = 1
        ids[n - shift:] = 2
    return ids


@functools.lru_cache(maxsize=64)
def shifted_window_masks(padded_size: Size3, window_size: Size3, shift_size: Size3,
                         device: torch.device) -> ShiftMasks:
    """Masks for attention over ``padded_size`` (a multiple of the window) rolled by ``-shift_size``.

    Tokens attend only within their own region; regions differ only in the last window along a shifted axis.
    """
    grid = [n // k for n, k in zip(padded_size, window_size)]
    ids = [_region_ids(n, k, s) for n, k, s in zip(padded_size, window_size, shift_size)]
    groups, first = [], []
    for kind in range(1, 8):
        last = [bool(kind & (4 >> axis)) for axis in range(3)]
        if any(is_last and s == 0 for is_last, s in zip(last, shift_size)):
            continue
        # Window grid coordinates of this kind, and the region labels of its tokens.
        sel = [torch.tensor([g - 1]) if is_last else torch.arange(g - 1 if s > 0 else g)
               for g, is_last, s in zip(grid, last, shift_size)]
        idx = (sel[0].view(-1, 1, 1) * grid[1] + sel[1].view(1, -1, 1)) * grid[2] + sel[2].view(1, 1, -1)
        if idx.numel() == 0:
            continue
        local = [r[-k:] if is_last else r[:k] for r, k, is_last in zip(ids, window_size, last)]
        labels = (local[0].view(-1, 1, 1) * 9 + local[1].view(1, -1, 1) * 3 + local[2].view(1, 1, -1)).flatten()
        mask = (labels[:, None] != labels[None, :]).float() * MASK_VALUE
        idx = idx.flatten().to(device)
        groups.append((idx, mask.to(device)))
        half = labels.numel() // 2
        if mask[:half, :half].any():
            first.append((idx, mask[:half, :half].contiguous().to(device)))
    return ShiftMasks(grid[0] * grid[1] * grid[2], tuple(groups), tuple(first))


def window_sdpa(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None,
                masks: Sequence[tuple[Tensor, Tensor]] = (), num_windows: int = 1,
                rows_per_window: int = 1, scale: float | None = None) -> Tensor:
    """Attention over windows: q, k, v (R, heads, L, head_dim) with R = B * num_windows * rows_per_window
    (window-major).

    ``bias`` (1, heads, L, L) applies to every window; each ``masks`` entry (window indices, (L, L) mask) adds a
    mask to those windows (of every batch item). Explicit products add it in place to those windows' logits; SDPA
    recomputes those windows with it.
    """
    batch = q.shape[0] // (num_windows * rows_per_window)
    masks = [(_window_rows(windows, batch, num_windows, rows_per_window), mask) for windows, mask in masks]
    if explicit_attention(q, k, v):
        return _explicit(q, k, v, bias, masks, scale)
    out = _sdpa(q, k, v, bias, scale)
    if not masks:
        return out
    outs = [_sdpa(q[rows], k[rows], v[rows], mask.to(q.dtype) if bias is None else bias + mask.to(bias.dtype), scale)
            for rows, mask in masks]
    return out.index_copy(0, torch.cat([rows for rows, _ in masks]), torch.cat(outs))


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, scale: float | None = None) -> Tensor:
    """softmax(q k^T scale + mask) v for (R, heads, L, head_dim) inputs, ``mask`` broadcasting over them."""
    if explicit_attention(q, k, v):
        return _explicit(q, k, v, mask, (), scale)
    return _sdpa(q, k, v, mask, scale)


def explicit_attention(*tensors: Tensor) -> bool:
    """Whether attention over these tensors runs as explicit products rather than SDPA: on CPU while training.

    CPU SDPA takes its math path whenever an additive mask needs a gradient (VRT's position bias), and that path's
    "safe" softmax scans every logit row for -inf (``isneginf``, ``all``, ``where``) that our masks never hold; its
    flash kernel is slower than two matmuls on windows this small. Under no_grad SDPA's flash kernel keeps memory
    at one window block; on GPU its fused kernels win."""
    return (tensors[0].device.type == "cpu" and torch.is_grad_enabled()
            and any(t.requires_grad for t in tensors))


def _window_rows(windows: Tensor, batch: int, num_windows: int, rows_per_window: int) -> Tensor:
    """Rows of the (R, ...) window batch that hold ``windows`` (window-partition indices) of every batch item."""
    offsets = torch.arange(batch, device=windows.device).view(-1, 1) * num_windows
    sub = torch.arange(rows_per_window, device=windows.device)
    return ((offsets + windows.view(1, -1)).view(-1, 1) * rows_per_window + sub).flatten()


def _explicit(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, masks: Sequence[tuple[Tensor, Tensor]],
              scale: float | None) -> Tensor:
    """Explicit products in row chunks whose logits stay under EXPLICIT_CHUNK_ELEMENTS: glibc hands larger blocks to
    mmap and back to the OS on free, so each would be zeroed page by page again on every use (measured: one
    vrt_gopro self-attention forward + backward 0.75 s whole, 0.44 s in 14 MiB chunks)."""
    rows_per_chunk = max(1, EXPLICIT_CHUNK_ELEMENTS // (q.shape[1] * q.shape[2] * k.shape[2]))
    if q.shape[0] <= rows_per_chunk:
        return _explicit_rows(q, k, v, bias, masks, scale)
    outs = []
    for start in range(0, q.shape[0], rows_per_chunk):
        end = start + rows_per_chunk
        local = [(rows[(rows >= start) & (rows < end)] - start, mask) for rows, mask in masks]
        outs.append(_explicit_rows(q[start:end], k[start:end], v[start:end], bias, local, scale))
    return torch.cat(outs)


def _explicit_rows(q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, masks: Sequence[tuple[Tensor, Tensor]],
                   scale: float | None) -> Tensor:
    logits = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
    if bias is not None:
        logits.add_(bias)  # in place: the product's backward does not need its output
    for rows, mask in masks:
        logits.index_add_(0, rows, mask.to(logits.dtype).expand(len(rows), *logits.shape[1:]))
    return logits.softmax(-1) @ v


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    """SDPA in batch chunks of at most MAX_SDPA_BATCH (``mask`` broadcasts over the batch)."""
    step = MAX_SDPA_BATCH
    if q.shape[0] <= step:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return torch.cat([F.scaled_dot_product_attention(q[i:i + step], k[i:i + step], v[i:i + step],
                                                     attn_mask=mask, scale=scale)
                      for i in range(0, q.shape[0], step)])


class WindowAttention(nn.Module):
    """Self attention with learned relative position bias, plus (``mut_attn``) mutual attention between the two
    frames of a window with sine position encoding; both go through one projection."""

    def __init__(self, dim: int, window_size: Sequence[int], num_heads: int, qkv_bias: bool = False,
                 qk_scale: float | None = None, mut_attn: bool = True) -> None:
        super().__init__()
        self.dim, self.num_heads, self.mut_attn = dim, num_heads, mut_attn
        self.window_size = tuple(window_size)
        self.qk_scale = qk_scale or None  # None: SDPA's default head_dim ** -0.5, as the official default
        table_size = math.prod(2 * w - 1 for w in self.window_size)
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_size, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(self.window_size))
        if mut_attn:
            self.register_buffer("position_bias", sine_position_encoding(self.window_size[1:], dim // 2))
        self.qkv_self = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(2 * dim if mut_attn else dim, dim)
        if mut_attn:
            self.qkv_mut = nn.Linear(dim, dim * 3, bias=qkv_bias)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x: Tensor, masks: ShiftMasks | None = None) -> Tensor:
        """x: (B * nW, N, C) windows -> (B * nW, N, C)."""
        b_, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv_self(x).view(b_, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_position_bias_table[self.relative_position_index[:n, :n].reshape(-1)]
        bias = bias.view(n, n, heads).permute(2, 0, 1).unsqueeze(0).to(qkv.dtype)
        out = window_sdpa(qkv[0], qkv[1], qkv[2], bias, masks.groups if masks else (),
                          masks.num_windows if masks else 1, scale=self.qk_scale)
        if not self.mut_attn:
            return self.proj(out.transpose(1, 2).reshape(b_, n, c))
        own = out.reshape(b_, heads, 2, n // 2, c // heads).permute(0, 2, 3, 1, 4)
        # Channels: mutual heads first, then self heads, as the projection was trained.
        return self.proj(torch.cat((self._mutual(x, masks), own), dim=3).view(b_, n, 2 * c))

    def _mutual(self, x: Tensor, masks: ShiftMasks | None) -> Tensor:
        """Each frame queries the other: (B * nW, 2, N/2, heads, head_dim), placed at the positions of frame 0
        for the result of frame 1's queries and vice versa (the official arrangement)."""
        b_, n, c = x.shape
        heads, half = self.num_heads, n // 2
        x = x.view(b_, 2, half, c) + self.position_bias.view(1, 1, half, c).to(x.dtype)
        qkv = self.qkv_mut(x).view(b_, 2, half, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        q = qkv[0].flip(1).reshape(2 * b_, heads, half, c // heads)  # swap frames: frame 1 queries frame 0
        k = qkv[1].reshape(2 * b_, heads, half, c // heads)
        v = qkv[2].reshape(2 * b_, heads, half, c // heads)
        out = window_sdpa(q, k, v, None, masks.first_frame if masks else (), masks.num_windows if masks else 1,
                          rows_per_window=2, scale=self.qk_scale)
        return out.view(b_, 2, heads, half, c // heads).transpose(2, 3)


class MlpGEGLU(nn.Module):
    """Feed-forward with a GELU-gated linear unit ("GLU Variants Improve Transformer")."""

    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc11 = nn.Linear(in_features, hidden_features)
        self.fc12 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc11(x)) * self.fc12(x))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def _maybe_checkpoint(enabled: bool, fn: Callable[..., Tensor], *args: object) -> Tensor:
    # Non-reentrant: works with inputs that need no grad, keyword-free closures and DeepSpeed ZeRO-3 hooks.
    return checkpoint.checkpoint(fn, *args, use_reentrant=False) if enabled else fn(*args)


class TMSA(nn.Module):
    """One block: (shifted) window attention and a GEGLU feed-forward, both pre-norm residual.
    x: (B, D, H, W, C) -> same."""

    def __init__(self, dim: int, num_heads: int, window_size: Sequence[int] = (6, 8, 8),
                 shift_size: Sequence[int] = (0, 0, 0), mut_attn: bool = True, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_path: float = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, use_checkpoint_attn: bool = False,
                 use_checkpoint_ffn: bool = False) -> None:
        super().__init__()
        self.window_size, self.shift_size = tuple(window_size), tuple(shift_size)
        if not all(0 <= s < w for s, w in zip(self.shift_size, self.window_size)):
            raise ValueError(f"shift_size {self.shift_size} must lie in [0, window_size {self.window_size})")
        self.use_checkpoint_attn, self.use_checkpoint_ffn = use_checkpoint_attn, use_checkpoint_ffn
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias, qk_scale, mut_attn)
        self.drop_path = DropPath(drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = MlpGEGLU(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, masks: ShiftMasks | None = None) -> Tensor:
        x = x + _maybe_checkpoint(self.use_checkpoint_attn, self._attention, x, masks)
        return x + _maybe_checkpoint(self.use_checkpoint_ffn, self._feed_forward, x)

    def _attention(self, x: Tensor, masks: ShiftMasks | None) -> Tensor:
        b, d, h, w, _ = x.shape
        ws, ss = get_window_size((d, h, w), self.window_size, self.shift_size)
        x = self.norm1(x)
        pad = [(k - n % k) % k for n, k in zip((d, h, w), ws)]
        if any(pad):  # zeros after the norm, as the official model pads
            x = F.pad(x, (0, 0, 0, pad[2], 0, pad[1], 0, pad[0]))
        shifted = any(ss)
        if shifted:
            x = torch.roll(x, shifts=tuple(-s for s in ss), dims=(1, 2, 3))
        dp, hp, wp = x.shape[1:4]
        x = self.attn(window_partition(x, ws), masks if shifted else None)
        x = window_reverse(x, ws, b, dp, hp, wp)
        if shifted:
            x = torch.roll(x, shifts=ss, dims=(1, 2, 3))
        if any(pad):
            x = x[:, :d, :h, :w]
        return self.drop_path(x)

    def _feed_forward(self, x: Tensor) -> Tensor:
        return self.drop_path(self.mlp(self.norm2(x)))


class TMSAG(nn.Module):
    """A group of TMSA blocks, every second one shifted by half a window. x: (B, D, H, W, C) -> same."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Sequence[int] = (6, 8, 8),
                 shift_size: Sequence[int] | None = None, mut_attn: bool = True, mlp_ratio: float = 2.0,
                 qkv_bias: bool = False, qk_scale: float | None = None,
                 drop_path: float | Sequence[float] = 0.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 use_checkpoint_attn: bool = False, use_checkpoint_ffn: bool = False) -> None:
        super().__init__()
        self.window_size = tuple(window_size)
        self.shift_size = tuple(w // 2 for w in window_size) if shift_size is None else tuple(shift_size)
        self.blocks = nn.ModuleList([
            TMSA(dim, num_heads, self.window_size, (0, 0, 0) if i % 2 == 0 else self.shift_size, mut_attn,
                 mlp_ratio, qkv_bias, qk_scale, drop_path[i] if isinstance(drop_path, Sequence) else drop_path,
                 norm_layer, use_checkpoint_attn, use_checkpoint_ffn)
            for i in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        size = tuple(x.shape[1:4])
        ws, ss = get_window_size(size, self.window_size, self.shift_size)
        masks = None
        if any(ss) and len(self.blocks) > 1:
            padded = tuple(math.ceil(n / k) * k for n, k in zip(size, ws))
            masks = shifted_window_masks(padded, ws, ss, x.device)
        for blk in self.blocks:
            x = blk(x, masks)
        return x


class RTMSA(nn.Module):
    """Residual TMSA group with self attention only (VRT's stage 8). x: (B, D, H, W, C) -> same."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: Sequence[int], mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_path: float | Sequence[float] = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, use_checkpoint_attn: bool = False,
                 use_checkpoint_ffn: bool = False) -> None:
        super().__init__()
        self.residual_group = TMSAG(dim, depth, num_heads, window_size, None, False, mlp_ratio, qkv_bias,
                                    qk_scale, drop_path, norm_layer, use_checkpoint_attn, use_checkpoint_ffn)
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.linear(self.residual_group(x))
