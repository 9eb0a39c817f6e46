"""Run the model on frames of any size: pad to what the model needs, optionally in overlapping spatial tiles
blended with smooth weights, crop back. Validation and inference share it."""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F

Forward = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]  # (blur, spike, flow_spike)
Size = Union[int, tuple[int, int]]  # square, or (height, width)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad the last two dims of (B,T,C,H,W) up to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    b, t = x.shape[:2]
    flat = F.pad(x.flatten(0, 1), (0, pad_w, 0, pad_h), mode="replicate")
    return flat.unflatten(0, (b, t))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap`` shared pixels."""
    if tile >= length:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_ramp(tile: int, overlap: int, device: torch.device) -> torch.Tensor:
    """1-D weights: 1 inside, falling linearly towards the tile's edges over ``overlap`` pixels (never 0)."""
    i = torch.arange(tile, device=device, dtype=torch.float32)
    edge = torch.minimum(i + 1, tile - i) / (overlap + 1)
    return edge.clamp(max=1.0)


def _pair(size: Size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def restore(forward: Forward, blur: torch.Tensor, spike: torch.Tensor, multiple: int,
            tile: Optional[Size] = None, overlap: Size = 32, flow_spike: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Deblur (B,T,3,H,W) with spikes (B,T,K,H,W) (and SCFlow's ``flow_spike`` (B,N,25,H,W) when the model takes it)
    -> (B,T,3,H,W) in float32.

    ``tile=None`` runs whole frames (padded). Otherwise tiles of ``tile`` pixels (square, or (height, width); each
    a multiple of ``multiple``) overlapping by ``overlap`` (likewise) run one at a time, so activation memory
    depends on the tile, not the frame. A tile at least as large as the padded frame runs it whole."""
    h, w = blur.shape[-2:]
    blur_p, spike_p = pad_to_multiple(blur, multiple), pad_to_multiple(spike, multiple)
    flow_p = None if flow_spike is None else pad_to_multiple(flow_spike, multiple)
    hp, wp = blur_p.shape[-2:]
    if tile is None or (_pair(tile)[0] >= hp and _pair(tile)[1] >= wp):
        return forward(blur_p, spike_p, flow_p).float()[..., :h, :w]
    if any(t % multiple for t in _pair(tile)):
        raise ValueError(f"tile size {tile} must be a multiple of {multiple}, what the model's windows need")
    (th, tw), (oh, ow) = [min(t, n) for t, n in zip(_pair(tile), (hp, wp))], _pair(overlap)
    out = torch.zeros(blur_p.shape, dtype=torch.float32, device=blur.device)
    weight = torch.zeros((hp, wp), dtype=torch.float32, device=blur.device)
    ramp = blend_ramp(th, oh, blur.device)[:, None] * blend_ramp(tw, ow, blur.device)[None, :]
    for y in tile_starts(hp, th, oh):
        for x in tile_starts(wp, tw, ow):
            window = (..., slice(y, y + th), slice(x, x + tw))
            flow = None if flow_p is None else flow_p[window]
            out[window] += forward(blur_p[window], spike_p[window], flow).float() * ramp
            weight[y:y + th, x:x + tw] += ramp
    return (out / weight)[..., :h, :w]
