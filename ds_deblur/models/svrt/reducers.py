"""Restoration reducers: an expanded early fusion restores S frames per exposure; a reducer makes one of them.

Parameter names are S-VRT's (``restoration_reducer.selector.1.weight``, ...).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch.nn.functional as F
from torch import Tensor, nn


def _groups(x: Tensor, spike_bins: int) -> Tensor:
    """(B, T*S, C, H, W) -> (B, T, S, C, H, W)."""
    b, steps, c, h, w = x.shape
    if spike_bins <= 0 or steps % spike_bins:
        raise ValueError(f"{steps} restored frames are not a whole number of {spike_bins} per exposure")
    return x.view(b, steps // spike_bins, spike_bins, c, h, w)


class IndexReducer(nn.Module):
    """The ``index``-th sub-frame of each exposure (clamped to the sub-frames there are)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: Tensor, spike_bins: int, base_rgb: Optional[Tensor] = None) -> Tensor:
        return _groups(x, spike_bins)[:, :, max(0, min(self.index, spike_bins - 1))]


class SelectorReducer(nn.Module):
    """A softmax over the sub-frames, scored from each sub-frame's channel mean pooled over space."""

    def __init__(self, selector_hidden: int = 8) -> None:
        super().__init__()
        self.selector = nn.Sequential(nn.AdaptiveAvgPool3d((None, 1, 1)), nn.Conv3d(1, selector_hidden, 1),
                                      nn.ReLU(inplace=True), nn.Conv3d(selector_hidden, 1, 1))

    def forward(self, x: Tensor, spike_bins: int, base_rgb: Optional[Tensor] = None) -> Tensor:
        groups = _groups(x, spike_bins)
        b, t, s, _, h, w = groups.shape
        scores = self.selector(groups.mean(dim=3).reshape(b * t, 1, s, h, w)).reshape(b, t, s)
        weights = F.softmax(scores, dim=2)[..., None, None, None]
        return (groups * weights).sum(dim=2)


def build_reducer(options: Mapping[str, Any]) -> nn.Module:
    """``netG.restoration_reducer``: index (default), selector or residual_selector (S-VRT's selector that only
    checks it is given the base frames; the residual is added by the model either way)."""
    kind = str(options.get("type", "index")).lower()
    if kind == "index":
        return IndexReducer(int(options.get("index", 0)))
    return SelectorReducer(int(options.get("selector_hidden", 8)))
