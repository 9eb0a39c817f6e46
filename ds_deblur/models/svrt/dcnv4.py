"""S-VRT's ``dcn_type: DCNv4`` parallel warping: the DCNv4 package's kernel (a CUDA extension, OpenGVLab) under
S-VRT's parameter layout.

``pa_deform.dcn.{offset_mask,value_proj,output_proj}.*`` are DCNv4's own layers; ``pa_deform.conv_offset.*``
predicts DCNv4's packed offsets and modulation from the flow-warped neighbour, the current frame and the flow
(as DCNv2 does, but the flow is an input only: unlike DCNv2 it is not added to the offsets). ``dcn.offset_mask`` is
kept for its place in the state dict and never used, as in S-VRT. The kernel's packing per pixel and group:
``2K`` offsets (x, y) then ``K`` modulation weights, ``K = group * kernel**2``, padded to a multiple of 8.
"""
from __future__ import annotations

import importlib
import math

import torch
from torch import Tensor, nn

from ds_deblur.errors import ConfigError

PACKAGE = "DCNv4"
IM2COL_STEP = 256  # DCNv4's own module passes this to its kernel


def kernel_function() -> type:
    """The DCNv4 package's autograd function; a ``ConfigError`` naming the option when the package is missing."""
    try:
        return importlib.import_module(PACKAGE).DCNv4Function
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"netG.dcn_type=DCNv4 needs the DCNv4 package (a CUDA extension), which is not usable "
                          f"here ({err}). Either install it on a CUDA machine (pip install DCNv4, or build "
                          f"S-VRT's models/op/dcnv4), or set netG.dcn_type=DCNv2 (e.g. --set netG.dcn_type=DCNv2)"
                          ) from err


def kernel_groups(channels: int, deformable_groups: int) -> int:
    """S-VRT's choice of DCNv4 groups: ``deformable_groups`` when each group gets a multiple of 16 channels (the
    kernel's requirement), else the largest smaller divisor of ``channels`` that does, else 1."""
    for groups in range(deformable_groups, 0, -1):
        if channels % groups == 0 and (channels // groups) % 16 == 0:
            return groups
    return 1


class DCNv4Layers(nn.Module):
    """DCNv4's module parameters (``offset_mask``, ``value_proj``, ``output_proj``) with its initialisation."""

    def __init__(self, channels: int, kernel_size: int, groups: int, bias: bool) -> None:
        super().__init__()
        if channels % (16 * groups):
            raise ConfigError(f"netG.dcn_type=DCNv4 needs VRT feature channels (netG.embed_dims) divisible by 16 "
                              f"per deformable group, got {channels} channels in {groups} group(s)")
        self.taps = groups * kernel_size * kernel_size
        self.packed = int(math.ceil(self.taps * 3 / 8) * 8)
        self.offset_mask = nn.Linear(channels, self.packed)
        self.value_proj = nn.Linear(channels, channels)
        self.output_proj = nn.Linear(channels, channels, bias=bias)
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


class DCNv4PackFlowGuided(nn.Module):
    """``(x, warped, current, flows)`` -> aligned ``(N, C, H, W)``, the call of :class:`DCNv2PackFlowGuided`.

    ``apply_softmax`` (``netG.dcn_apply_softmax``) normalises each channel of the kernel's output over the image
    with a softmax, as S-VRT's DCNv4 copy does."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, dilation: int = 1, deformable_groups: int = 1, pa_frames: int = 2,
                 apply_softmax: bool = False, bias: bool = True) -> None:
        super().__init__()
        if pa_frames != 2:
            raise ConfigError(f"netG.dcn_type=DCNv4 aligns one neighbour per frame: it needs netG.pa_frames=2, "
                              f"got {pa_frames} (use netG.dcn_type=DCNv2 for more)")
        self.function = kernel_function()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.groups = kernel_groups(in_channels, deformable_groups)
        self.apply_softmax = apply_softmax
        self.dcn = DCNv4Layers(in_channels, kernel_size, self.groups, bias)
        self.conv_offset = nn.Sequential(
            nn.Conv2d(2 * in_channels + pa_frames, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1),
            nn.LeakyReLU(negative_slope=0.1, inplace=True),
            nn.Conv2d(out_channels, self.dcn.packed, 3, 1, 1),
        )

    def forward(self, x: Tensor, warped: Tensor, current: Tensor, flows: Tensor) -> Tensor:
        n, c, h, w = x.shape
        offset_mask = self.conv_offset(torch.cat((warped, current, flows), dim=1)).permute(0, 2, 3, 1).contiguous()
        value = self.dcn.value_proj(x.permute(0, 2, 3, 1)).contiguous()
        k, s, p, d = self.kernel_size, self.stride, self.padding, self.dilation
        out = self.function.apply(value, offset_mask, k, k, s, s, p, p, d, d, self.groups, c // self.groups, 1.0,
                                  IM2COL_STEP, 0)
        if self.apply_softmax:
            out = torch.softmax(out.reshape(n, h * w, c), dim=1)
        return self.dcn.output_proj(out.reshape(n, h, w, c)).permute(0, 3, 1, 2).contiguous()
