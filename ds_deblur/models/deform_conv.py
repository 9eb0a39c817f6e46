"""Sampling at pixel coordinates on top of ``grid_sample``: flow warping and modulated deformable convolution.

``deform_conv2d`` follows torchvision's ``deform_conv2d`` semantics exactly (bilinear sampling, zeros outside the
image, one (dy, dx) offset pair per offset group and kernel tap, optional modulation mask), so weights trained with
the CUDA extension behave the same here. It is an im2col formulation: one ``grid_sample`` gathers every tap of every
offset group, one batched matmul applies the weights.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from torch import Tensor
from torch.nn.modules.utils import _pair

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _coord_dtype(x: Tensor) -> torch.dtype:
    # Normalised coordinates in half precision are off by up to a few pixels on HD frames, so sample in fp32.
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def sample_pixels(x: Tensor, px: Tensor, py: Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> Tensor:
    """Sample ``x`` (N, C, H, W) at pixel coordinates ``px``, ``py`` (N, Ho, Wo) -> (N, C, Ho, Wo).

    Pixel (0, 0) is the centre of the top-left pixel. The normalisation is the exact inverse of grid_sample's
    ``align_corners=False`` mapping, which is valid for any size (also 1).
    """
    h, w = x.shape[-2:]
    dtype = _coord_dtype(x)
    gx = px.to(dtype) * (2.0 / w) + (1.0 / w - 1.0)
    gy = py.to(dtype) * (2.0 / h) + (1.0 / h - 1.0)
    grid = torch.stack((gx, gy), dim=-1)
    if padding_mode != "zeros":
        # PyTorch's CPU grid_sample backward writes out of bounds at NaN coordinates with border/reflection
        # padding (a segfault). A NaN in the data must end in a skipped step, and the NaN still reaches the loss
        # through every other path.
        grid = torch.nan_to_num(grid, nan=0.0)
    out = F.grid_sample(x.to(dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return out.to(x.dtype)


def _base_grid(h: int, w: int, like: Tensor) -> tuple[Tensor, Tensor]:
    dtype = _coord_dtype(like)
    ys = torch.arange(h, device=like.device, dtype=dtype).view(h, 1)
    xs = torch.arange(w, device=like.device, dtype=dtype).view(1, w)
    return xs, ys


def flow_warp(x: Tensor, flow: Tensor, mode: str = "bilinear", padding_mode: str = "zeros") -> Tensor:
    """Backward-warp ``x`` (N, C, H, W) with ``flow`` (N, 2, H, W), channels (dx, dy) in pixels.

    ``mode='nearest4'`` returns the four integer neighbours of each target, concatenated on channels in the order
    (floor x, floor y), (floor x, ceil y), (ceil x, floor y), (ceil x, ceil y) -> (N, 4C, H, W). It carries no
    gradient to the flow (VRT uses it for the input frames only).
    """
    n, c, h, w = x.shape
    xs, ys = _base_grid(h, w, x)
    px = xs + flow[:, 0].to(xs.dtype)
    py = ys + flow[:, 1].to(ys.dtype)
    if mode != "nearest4":
        return sample_pixels(x, px, py, mode, padding_mode)
    x0, x1, y0, y1 = px.floor(), px.ceil(), py.floor(), py.ceil()
    # All four corner sets in one call: stacked along the height axis of the sampling grid.
    px4 = torch.cat((x0, x0, x1, x1), dim=1)
    py4 = torch.cat((y0, y1, y0, y1), dim=1)
    out = sample_pixels(x, px4, py4, "nearest", padding_mode)  # (N, C, 4H, W)
    return out.view(n, c, 4, h, w).transpose(1, 2).reshape(n, 4 * c, h, w)


def _conv_out_size(size: int, kernel: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (kernel - 1) - 1) // stride + 1


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Modulated deformable convolution with torchvision's ``deform_conv2d`` signature and semantics.

    input (N, Cin, H, W); weight (Cout, Cin / weight_groups, kh, kw); offset (N, 2 * G * kh * kw, Ho, Wo) laid out
    as, for each offset group g and kernel tap k = i * kw + j, the pair (dy, dx); mask (N, G * kh * kw, Ho, Wo).
    Weight groups and offset groups G are inferred from the shapes, as torchvision does.
    """
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c_in, h, w = input.shape
    c_out, _, kh, kw = weight.shape
    ho, wo = _conv_out_size(h, kh, sh, ph, dh), _conv_out_size(w, kw, sw, pw, dw)
    _check_deform_shapes(input, offset, weight, mask, offset.shape[1] // (2 * kh * kw), (ho, wo))
    geometry = (sh, sw, ph, pw, dh, dw)
    tensors = (input, offset, weight) if mask is None else (input, offset, weight, mask)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        # The sampled columns are kernel-size times the input; recompute them in backward (as torchvision
        # does) instead of keeping two copies alive until then.
        out = checkpoint.checkpoint(_deform_conv_columns, input, offset, weight, mask, geometry,
                                    use_reentrant=False)
    else:
        out = _deform_conv_columns(input, offset, weight, mask, geometry)
    return out if bias is None else out + bias.view(1, c_out, 1, 1)


def _deform_conv_columns(input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
                         geometry: tuple[int, ...]) -> Tensor:
    sh, sw, ph, pw, dh, dw = geometry
    n, c_in, h, w = input.shape
    c_out, c_per_wgroup, kh, kw = weight.shape
    ho, wo = offset.shape[-2:]
    taps = kh * kw
    groups = offset.shape[1] // (2 * taps)
    weight_groups = c_in // c_per_wgroup

    # Sampling positions of every (group, tap, output pixel): the regular conv grid plus the learned offset.
    dtype = _coord_dtype(input)
    off = offset.to(dtype).view(n, groups, taps, 2, ho, wo)
    tap_y = (torch.arange(kh, device=input.device, dtype=dtype) * dh).repeat_interleave(kw)
    tap_x = (torch.arange(kw, device=input.device, dtype=dtype) * dw).repeat(kh)
    base_y = tap_y.view(taps, 1, 1) + (torch.arange(ho, device=input.device, dtype=dtype) * sh - ph).view(1, ho, 1)
    base_x = tap_x.view(taps, 1, 1) + (torch.arange(wo, device=input.device, dtype=dtype) * sw - pw).view(1, 1, wo)
    py = (off[:, :, :, 0] + base_y).view(n * groups, taps * ho, wo)
    px = (off[:, :, :, 1] + base_x).view(n * groups, taps * ho, wo)

    # (N*G, Cin/G, taps*Ho, Wo) is already the im2col layout (N, Cin, taps, Ho*Wo) in memory.
    cols = sample_pixels(input.reshape(n * groups, c_in // groups, h, w), px, py)
    cols = cols.view(n, groups, c_in // groups, taps, ho * wo)
    if mask is not None:
        cols = cols * mask.view(n, groups, 1, taps, ho * wo).to(cols.dtype)
    cols = cols.view(n, weight_groups, c_per_wgroup * taps, ho * wo)
    out = weight.view(weight_groups, c_out // weight_groups, c_per_wgroup * taps) @ cols
    return out.view(n, c_out, ho, wo)


def _check_deform_shapes(
    input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None, groups: int, out_hw: tuple[int, int]
) -> None:
    n, c_in = input.shape[:2]
    c_out, c_per_wgroup, kh, kw = weight.shape
    taps = kh * kw
    if groups == 0 or offset.shape != (n, 2 * groups * taps, *out_hw):
        raise ValueError(f"deform_conv2d: offset shape {tuple(offset.shape)} does not match (N={n}, "
                         f"2*groups*{taps}, {out_hw[0]}, {out_hw[1]}) for input {tuple(input.shape)}")
    if c_in % c_per_wgroup or c_out % (c_in // c_per_wgroup) or c_in % groups:
        raise ValueError(f"deform_conv2d: {c_in} input channels do not split into weight groups of "
                         f"{c_per_wgroup} (weight {tuple(weight.shape)}) and {groups} offset groups")
    if mask is not None and mask.shape != (n, groups * taps, *out_hw):
        raise ValueError(f"deform_conv2d: mask shape {tuple(mask.shape)} != {(n, groups * taps, *out_hw)}")


class _ZeroConv2d(nn.Conv2d):
    """A Conv2d that starts at zero. Zeroed in its own ``reset_parameters`` (run by its ``__init__``), so it also
    holds under DeepSpeed's ``zero.Init``, which partitions each module's parameters once its ``__init__`` ends."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class DCNv2PackFlowGuided(nn.Module):
    """Flow-guided modulated deformable convolution (VRT's parallel warping, after BasicVSR++).

    Offsets are the optical flow of each of the ``pa_frames // 2`` neighbours plus a residual bounded by
    ``max_residue_magnitude * tanh``; the modulation mask is a sigmoid. Both are predicted by ``conv_offset``
    from the flow-warped neighbours, the current frame and the flows. Parameter names follow the official release.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, deformable_groups: int = 1,
                 max_residue_magnitude: float = 10.0, pa_frames: int = 2) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.deformable_groups = deformable_groups
        self.max_residue_magnitude = max_residue_magnitude
        self.pa_frames = pa_frames
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels))
        neighbours = pa_frames // 2
        self.conv_offset = nn.Sequential(
            nn.Conv2d((1 + neighbours) * in_channels + pa_frames, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            # Zero start: training begins from pure flow warping with a 0.5 mask.
            _ZeroConv2d(out_channels, 3 * taps * deformable_groups, 3, 1, 1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.in_channels * self.kernel_size[0] * self.kernel_size[1])
        nn.init.uniform_(self.weight, -stdv, stdv)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, warped: Tensor, current: Tensor, flows: Tensor) -> Tensor:
        """x: the neighbours (N, m*C, H, W) in the order of ``flows``; warped: the same, flow-warped; current:
        (N, C, H, W) the frame being aligned to; flows: (N, 2*m, H, W), per neighbour (dx, dy); m = pa_frames // 2."""
        out = self.conv_offset(torch.cat((warped, current, flows), dim=1))
        n, _, h, w = out.shape
        m = self.pa_frames // 2
        n_off = 2 * self.deformable_groups * self.kernel_size[0] * self.kernel_size[1]
        residual = self.max_residue_magnitude * torch.tanh(out[:, :n_off])
        # Neighbour j owns the j-th block of offset groups; its flow, as (dy, dx), is added to every tap.
        flow_yx = flows.view(n, m, 1, 2, h, w).flip(3)
        offset = (residual.view(n, m, -1, 2, h, w) + flow_yx).view(n, n_off, h, w)
        mask = torch.sigmoid(out[:, n_off:])
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)
