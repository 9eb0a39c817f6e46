"""SCFlow: optical flow from spike-camera streams (Hu et al., "Optical Flow Estimation for Spiking Camera", CVPR 2022),
as S-VRT embeds it for VRT's alignment.

Each input is one window of 25 binary spike planes (N, 25, H, W). Two small convs turn a window into features, a
4-level encoder (full, 1/2, 1/4, 1/8 resolution) builds a pyramid, and a PWC-style decoder refines the flow coarse to
fine from a 9x9 correlation volume. Parameter names, shapes and registration order are those of S-VRT's SCFlow, so
its released weights (``dt10_e40.pth``: ``{'epoch', 'arch', 'state_dict'}``) load as they are.

The network always computes in float32 (S-VRT runs it with autocast off on float32 inputs): under DeepSpeed's
bf16/fp16 the weights are upcast on the fly, and the flows come back in float32.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ds_deblur.models.deform_conv import flow_warp
from ds_deblur.models.state import load_exactly

SPIKE_WINDOW = 25
SEARCH_RADIUS = 4
ENCODER_CHANNELS = (32, 32, 64, 96, 128)
# Each encoder level after the first halves H and W; VRT reshapes the flows to h // 2**i, w // 2**i.
SIZE_MULTIPLE = 2 ** (len(ENCODER_CHANNELS) - 2)


def check_spike_pair(seq1: Tensor, seq2: Tensor) -> None:
    """Raise ValueError unless both are (N, 25, H, W) of equal shape with H and W multiples of 8."""
    if seq1.dim() != 4 or seq1.shape[1] != SPIKE_WINDOW or seq1.shape != seq2.shape:
        raise ValueError(f"SCFlow expects two spike windows of equal shape (N, {SPIKE_WINDOW}, H, W), got "
                         f"{tuple(seq1.shape)} and {tuple(seq2.shape)}")
    h, w = seq1.shape[-2:]
    if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
        raise ValueError(f"SCFlow needs H and W divisible by {SIZE_MULTIPLE} (its pyramid halves them "
                         f"{len(ENCODER_CHANNELS) - 2} times), got H={h}, W={w}")


def correlation(f1: Tensor, f2: Tensor, radius: int = SEARCH_RADIUS) -> Tensor:
    """Cost volume of two (N, C, H, W) maps -> (N, (2r+1)**2, H, W), through LeakyReLU(0.1).

    Channel (dy + r) * (2r + 1) + (dx + r) holds the channel mean of f1[:, :, y, x] * f2[:, :, y + dy, x + dx],
    zero where the displaced position is outside f2 (the spatial_correlation_sampler layout SCFlow was trained with).
    """
    h, w = f1.shape[-2:]
    size = 2 * radius + 1
    padded = F.pad(f2, [radius] * 4)
    costs = [(f1 * padded[:, :, dy:dy + h, dx:dx + w]).sum(dim=1) for dy in range(size) for dx in range(size)]
    return F.leaky_relu(torch.stack(costs, dim=1) / f1.shape[1], 0.1)


class _Float32Conv2d(nn.Conv2d):
    """Conv2d computing in float32 whatever dtype DeepSpeed keeps the weights in (``.float()`` is free in fp32)."""

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.float()
        return self._conv_forward(x.float(), self.weight.float(), bias)


class _Float32BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d normalising in float32; the running statistics are still updated in their own buffers."""

    def forward(self, x: Tensor) -> Tensor:
        # .float() copies low-precision buffers, so batch_norm's in-place update lands in the copies: write it back.
        mean, var = self.running_mean.float(), self.running_var.float()
        out = F.batch_norm(x.float(), mean, var, self.weight.float(), self.bias.float(), self.training,
                           self.momentum, self.eps)
        if self.training:
            self.num_batches_tracked.add_(1)
            self.running_mean.copy_(mean)
            self.running_var.copy_(var)
        return out


def _conv(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, batch_norm: bool = False,
          activate: bool = True) -> nn.Sequential:
    """Conv (+ BatchNorm) (+ LeakyReLU 0.1): SCFlow's building block; the conv is always entry 0."""
    layers: list[nn.Module] = [_Float32Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2)]
    if batch_norm:
        layers.append(_Float32BatchNorm2d(c_out))
    if activate:
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class _SpikeRepresentation(nn.Module):
    """A 25-plane spike window -> 32 feature channels at full resolution."""

    def __init__(self, batch_norm: bool) -> None:
        super().__init__()
        self.conv_s1 = _conv(SPIKE_WINDOW, 32, batch_norm=batch_norm)
        self.conv_s2 = _conv(32, 32, batch_norm=batch_norm)

    def forward(self, seq: Tensor) -> Tensor:
        return self.conv_s2(self.conv_s1(seq))


class _FeatureEncoder(nn.Module):
    """Feature pyramid, coarsest level first: (1/8, 1/4, 1/2, full) with (128, 96, 64, 32) channels."""

    def __init__(self, batch_norm: bool) -> None:
        super().__init__()
        chans = ENCODER_CHANNELS
        self.conv_list = nn.ModuleList(
            nn.Sequential(_conv(c_in, c_out, stride=1 if level == 0 else 2, batch_norm=batch_norm),
                          _conv(c_out, c_out, batch_norm=batch_norm))
            for level, (c_in, c_out) in enumerate(zip(chans[:-1], chans[1:])))

    def forward(self, x: Tensor) -> list[Tensor]:
        pyramid = []
        for block in self.conv_list:
            x = block(x)
            pyramid.insert(0, x)
        return pyramid


class _FlowEstimator(nn.Module):
    """Densely connected decoder: each conv sees the input and every earlier output; the last predicts a residual."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        # S-VRT builds the decoder without BatchNorm whatever batch_norm says.
        self.conv1 = _conv(c_in, 96)
        self.conv2 = _conv(c_in + 96, 64)
        self.conv3 = _conv(c_in + 96 + 64, 32)
        self.conv4 = _conv(c_in + 96 + 64 + 32, 2, activate=False)

    def forward(self, x: Tensor) -> Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = torch.cat([conv(x), x], dim=1)
        return self.conv4(x)


def _align_slices(seq: Tensor, flow: Tensor, dt: float) -> Tensor:
    """Warp slice k of a window by flow * (k - 12) / dt: spikes from either side of the centre move onto it."""
    n, c, h, w = seq.shape
    gains = torch.linspace(-(c // 2), c // 2, steps=c, device=seq.device, dtype=flow.dtype) / dt
    per_slice = (flow.unsqueeze(1) * gains.view(1, c, 1, 1, 1)).reshape(n * c, 2, h, w)
    return flow_warp(seq.reshape(n * c, 1, h, w), per_slice).view(n, c, h, w)


class SCFlow(nn.Module):
    """Flow from ``seq1`` to ``seq2`` (N, 25, H, W), H and W multiples of 8.

    ``forward`` returns four float32 flows (N, 2, H / s, W / s) for s = 1, 2, 4, 8, full resolution first, as VRT's
    ``get_flow_2frames`` takes them. ``flow_init`` (N, 2, H, W), when given, first aligns each window's slices along
    it, scaled by (k - 12) / ``dt`` for slice k; S-VRT's VRT never gives one (a zero flow, under which that alignment
    is the identity and is skipped here). The decoder always starts from zero flow at 1/8.
    """

    def __init__(self, batch_norm: bool = False, dt: float = 10.0) -> None:
        super().__init__()
        self.dt = dt
        self.spike_representation = _SpikeRepresentation(batch_norm)
        self.feature_encoder = _FeatureEncoder(batch_norm)
        self.flow_estimators = _FlowEstimator(ENCODER_CHANNELS[1] + (2 * SEARCH_RADIUS + 1) ** 2 + 2)
        self.conv_1x1 = nn.ModuleList(_conv(c, ENCODER_CHANNELS[1], kernel=1, activate=False)
                                      for c in reversed(ENCODER_CHANNELS[1:]))

    def forward(self, seq1: Tensor, seq2: Tensor, flow_init: Tensor | None = None) -> list[Tensor]:
        check_spike_pair(seq1, seq2)
        with torch.autocast(seq1.device.type, enabled=False):
            seq1, seq2 = seq1.float(), seq2.float()
            if flow_init is not None:
                seq1, seq2 = self._align(seq1, seq2, flow_init)
            pyramid1 = self.feature_encoder(self.spike_representation(seq1))
            pyramid2 = self.feature_encoder(self.spike_representation(seq2))
            return self._decode(pyramid1, pyramid2)

    def _align(self, seq1: Tensor, seq2: Tensor, flow_init: Tensor) -> tuple[Tensor, Tensor]:
        if flow_init.shape != (seq1.shape[0], 2, *seq1.shape[-2:]):
            raise ValueError(f"SCFlow flow_init must be (N, 2, H, W) = {(seq1.shape[0], 2, *seq1.shape[-2:])}, "
                             f"got {tuple(flow_init.shape)}")
        flow = flow_init.detach().float()
        # seq2's slices move along the flow carried to seq2's own pixels.
        return _align_slices(seq1, flow, self.dt), _align_slices(seq2, flow_warp(flow, -flow), self.dt)

    def _decode(self, pyramid1: list[Tensor], pyramid2: list[Tensor]) -> list[Tensor]:
        coarse = pyramid1[0]
        flow = coarse.new_zeros(coarse.shape[0], 2, *coarse.shape[-2:])
        flows: list[Tensor] = []
        for level, (f1, f2) in enumerate(zip(pyramid1, pyramid2)):
            if level > 0:
                flow = F.interpolate(flow * 2, scale_factor=2, mode="bilinear", align_corners=True)
                f2 = flow_warp(f2, flow)
            features = torch.cat([correlation(f1, f2), self.conv_1x1[level](f1), flow], dim=1)
            flow = flow + self.flow_estimators(features)
            flows.insert(0, flow)
        return flows


def load_scflow_weights(model: SCFlow, path: str | os.PathLike) -> None:
    """Load SCFlow weights in S-VRT's layouts: ``{'state_dict': state_dict, ...}`` (the release) or a plain state dict.

    Strict, as S-VRT's loader: keys as ``model.state_dict()`` gives them (no ``module.`` prefix is stripped); any
    missing, unexpected or misshapen key is a ``ValueError`` naming them. The caller checks that ``path`` exists.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"SCFlow weights {path} hold a {type(state).__name__}, not a state dict "
                         f"(or {{'state_dict': state_dict}})")
    load_exactly(model, state, f"SCFlow weights {path}", "netG.optical_flow.params.batch_norm must be what the file "
                 "was trained with (false for dt10_e40.pth).")
