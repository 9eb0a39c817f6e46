"""S-VRT's pixel-adaptive spike encoder (PASE).

At every pixel a small CNN predicts ``out_chans`` kernels of size ``in_chans x K x K`` from the spike stream;
output channel ``c`` is the dot product of kernel ``c`` with the ``in_chans x K x K`` spike patch around the pixel.
With ``normalize_kernel`` each kernel is a softmax over its ``in_chans * K * K`` taps, i.e. a learned weighted mean.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KernelPredictor(nn.Module):
    """Spike stream ``(B, L, H, W)`` -> kernel logits ``(B, C * L * K * K, H, W)``, ordered (c, l, ky, kx)."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, hidden_chans: int = 32) -> None:
        super().__init__()
        taps = in_chans * kernel_size * kernel_size
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, hidden_chans, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_chans, hidden_chans, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_chans, out_chans * taps, kernel_size=3, padding=1),
        )

    def forward(self, spike: torch.Tensor) -> torch.Tensor:
        return self.net(spike)


class PixelAdaptiveSpikeEncoder(nn.Module):
    """Spike stream ``(B, in_chans, H, W)`` -> features ``(B, out_chans, H, W)``; ``kernel_size`` must be odd so
    the patches keep the map's size."""

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 3, hidden_chans: int = 32,
                 normalize_kernel: bool = True) -> None:
        super().__init__()
        self.in_chans, self.out_chans, self.kernel_size = in_chans, out_chans, kernel_size
        self.normalize_kernel = normalize_kernel
        self.kernel_predictor = KernelPredictor(in_chans, out_chans, kernel_size, hidden_chans)

    def forward(self, spike: torch.Tensor) -> torch.Tensor:
        b, _, h, w = spike.shape
        k = self.kernel_size
        # unfold orders each patch (l, ky, kx), the order of the predictor's taps
        patches = F.unfold(spike, kernel_size=k, padding=k // 2)
        logits = self.kernel_predictor(spike).reshape(b, self.out_chans, -1, h * w)
        kernel = logits.softmax(dim=2) if self.normalize_kernel else logits
        # einsum contracts the taps without materialising the (B, C, L*K*K, H*W) product
        return torch.einsum("bcnp,bnp->bcp", kernel, patches).reshape(b, self.out_chans, h, w)
