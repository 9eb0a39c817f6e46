"""VRT backbone (Liang et al., "VRT: A Video Restoration Transformer") in plain PyTorch.

Same architecture, parameter names and shapes as the official release, so its ``.pth`` files load with
``strict=True``; written for speed: one SpyNet pass for both flow directions, parallel warping of all frames and
both directions in one batched deformable convolution, SDPA window attention, channels-last features throughout
(B, T, H, W, C) so stages need no transposes. Stage outputs are shown to a ``stage_hook`` as (B, C, T, H, W), the
official layout.
"""
from __future__ import annotations

import math
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops.layers.torch import Rearrange
from torch import Tensor

from ds_deblur.errors import WeightsNotFoundError
from ds_deblur.models.attention import RTMSA, TMSAG, MlpGEGLU
from ds_deblur.models.deform_conv import DCNv2PackFlowGuided, flow_warp
from ds_deblur.models.spynet import SpyNet, check_size
from ds_deblur.models.state import load_exactly

StageHook = Callable[[int, Tensor], Tensor]
Flows = list[Tensor]  # per scale (B, T - k, 2, H / s, W / s)

NUM_DOWNSAMPLINGS = 3  # stages 2-4 halve H and W
NUM_ENCODER_STAGES = 4


class FrameConv3d(nn.Conv3d):
    """A ``Conv3d`` with a (1, k, k) kernel (so the official weight shape), run as a 2-D conv on every frame.

    Input and output are channels-last: (B, T, H, W, C).
    """

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        b, t = x.shape[:2]
        frames = x.permute(0, 1, 4, 2, 3).flatten(0, 1)  # NCHW view with channels-last strides
        out = F.conv2d(frames, self.weight.squeeze(2), self.bias, self.stride[1:], self.padding[1:],
                       self.dilation[1:], self.groups)
        return out.permute(0, 2, 3, 1).unflatten(0, (b, t))


class PixelShuffleLast(nn.Module):
    """``nn.PixelShuffle`` for channels-last frames (B, T, H, W, C * r * r) -> (B, T, H * r, W * r, C)."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(x.permute(0, 1, 4, 2, 3), self.scale).permute(0, 1, 3, 4, 2)


def _make_upsample(scale: int, num_feat: int) -> nn.Sequential:
    # Module indices follow the official Sequential, where parameter-free transposes sit between these layers.
    if scale & (scale - 1) == 0:
        steps = [2] * int(math.log2(scale))
    elif scale == 3:
        steps = [3]
    else:
        raise ValueError(f"upscale {scale} is not supported: use 1, a power of 2, or 3")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, r in enumerate(steps):
        layers[str(5 * i)] = FrameConv3d(num_feat, r * r * num_feat, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        layers[str(5 * i + 2)] = PixelShuffleLast(r)
        layers[str(5 * i + 4)] = nn.LeakyReLU(negative_slope=0.1)
    layers[str(5 * len(steps))] = FrameConv3d(num_feat, num_feat, kernel_size=(1, 3, 3), padding=(0, 1, 1))
    return nn.Sequential(layers)


def _make_reshape(kind: str, in_dim: int, dim: int) -> nn.Sequential:
    """Stage entry: 'none' (norm), 'down' (2x2 patch merging) or 'up' (2x2 patch expanding); channels-last.
    Keys '1' (norm) and '2' (linear) are the official parameter names."""
    if kind == "none":
        return nn.Sequential(OrderedDict([("1", nn.LayerNorm(dim))]))
    if kind == "down":
        return nn.Sequential(OrderedDict([
            ("0", Rearrange("b d (h nh) (w nw) c -> b d h w (nw nh c)", nh=2, nw=2)),
            ("1", nn.LayerNorm(4 * in_dim)), ("2", nn.Linear(4 * in_dim, dim))]))
    if kind == "up":
        return nn.Sequential(OrderedDict([
            ("0", Rearrange("b d h w (nw nh c) -> b d (h nh) (w nw) c", nh=2, nw=2)),
            ("1", nn.LayerNorm(in_dim // 4)), ("2", nn.Linear(in_dim // 4, dim))]))
    raise ValueError(f"unknown stage reshape {kind!r}")


def _pad_frames(x: Tensor, count: int, at_end: bool) -> Tensor:
    if count == 0:
        return x
    pad = x.new_zeros(x.shape[0], count, *x.shape[2:])
    return torch.cat((x, pad) if at_end else (pad, x), dim=1)


class Stage(nn.Module):
    """Reshape, mutual+self attention group, self attention group, then parallel warping. (B, T, H, W, C)."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, window_size: Sequence[int],
                 mul_attn_ratio: float = 0.75, mlp_ratio: float = 2.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_path: float | Sequence[float] = 0.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, pa_frames: int = 2,
                 deformable_groups: int = 16, reshape: str = "none", max_residue_magnitude: float = 10.0,
                 use_checkpoint_attn: bool = False, use_checkpoint_ffn: bool = False) -> None:
        super().__init__()
        self.pa_frames = pa_frames
        self.reshape = _make_reshape(reshape, in_dim, dim)
        mutual_depth = int(depth * mul_attn_ratio)
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop_path=drop_path,
                      norm_layer=norm_layer, use_checkpoint_attn=use_checkpoint_attn,
                      use_checkpoint_ffn=use_checkpoint_ffn)
        self.residual_group1 = TMSAG(dim, mutual_depth, num_heads, (2, window_size[1], window_size[2]),
                                     mut_attn=True, **common)
        self.linear1 = nn.Linear(dim, dim)
        self.residual_group2 = TMSAG(dim, depth - mutual_depth, num_heads, window_size, mut_attn=False, **common)
        self.linear2 = nn.Linear(dim, dim)
        if pa_frames:
            self.pa_deform = DCNv2PackFlowGuided(dim, dim, 3, padding=1, deformable_groups=deformable_groups,
                                                 max_residue_magnitude=max_residue_magnitude, pa_frames=pa_frames)
            self.pa_fuse = MlpGEGLU(dim * 3, dim * 3, dim)

    def forward(self, x: Tensor, flows_backward: Flows, flows_forward: Flows) -> Tensor:
        x = self.reshape(x)
        x = self.linear1(self.residual_group1(x)) + x
        x = self.linear2(self.residual_group2(x)) + x
        if not self.pa_frames:
            return x
        backward, forward = self._parallel_warp(x, flows_backward, flows_forward)
        return self.pa_fuse(torch.cat((x, backward, forward), dim=-1))

    def _parallel_warp(self, x: Tensor, flows_backward: Flows, flows_forward: Flows) -> tuple[Tensor, Tensor]:
        """Align to every frame its next (backward branch) and previous (forward branch) ``pa_frames // 2``
        frames; missing neighbours are zeros with zero flow, and the last (first) frame's result is zero."""
        b, t, h, w, c = x.shape
        m = self.pa_frames // 2
        frames = _pad_frames(_pad_frames(x.permute(0, 1, 4, 2, 3), m - 1, True), m - 1, False)
        # Indices into the padded frames. Batch order (B, branch, target) for all tensors below.
        targets = torch.arange(t - 1, device=x.device)
        hop = torch.arange(1, m + 1, device=x.device)
        neighbour_idx = torch.stack((targets[:, None] + hop, targets[:, None] + 1 - hop)) + (m - 1)
        current_idx = torch.stack((targets, targets + 1)) + (m - 1)
        neighbours = frames.index_select(1, neighbour_idx.flatten()).reshape(-1, c, h, w)  # (B*2*(T-1)*m, C, H, W)
        current = frames.index_select(1, current_idx.flatten()).reshape(-1, c, h, w)  # (B*2*(T-1), C, H, W)
        flows = torch.stack([torch.stack((_pad_frames(flows_backward[j], j, True),
                                          _pad_frames(flows_forward[j], j, False)), dim=1)
                             for j in range(m)], dim=3).view(-1, 2, h, w)
        n = current.shape[0]
        warped = flow_warp(neighbours, flows).view(n, m * c, h, w)
        aligned = self.pa_deform(neighbours.view(n, m * c, h, w), warped, current, flows.view(n, 2 * m, h, w))
        aligned = aligned.view(b, 2, t - 1, c, h, w).permute(0, 1, 2, 4, 5, 3)
        return _pad_frames(aligned[:, 0], 1, True), _pad_frames(aligned[:, 1], 1, False)


class VRT(nn.Module):
    """Video Restoration Transformer backbone.

    Constructor arguments are the official ones (``img_size`` is accepted for compatibility and unused; only
    ``pa_frames`` 2, 4 and 6 are supported — 0, the frame-interpolation variant, is not). Activation checkpointing
    (``use_checkpoint_attn`` / ``use_checkpoint_ffn``, minus ``no_checkpoint_*_blocks`` indices into ``depths``)
    uses non-reentrant ``torch.utils.checkpoint``. Unlike the official code, stages' self-attention groups are not
    forced to checkpoint attention; the flags alone decide.

    ``forward(x, stage_hook=None)``: x (B, T, C, H, W) with C = in_chans (+1 noise map if nonblind_denoising),
    T >= :attr:`min_frames`, H and W multiples of :attr:`required_multiple` (else ``ValueError``; pad to fit, e.g.
    by reflection, and crop the output) -> (B, T, out_chans, H * upscale, W * upscale). Clips shorter than the
    temporal window are fine (the window shrinks to T); longer ones that are not a multiple are zero-padded inside
    each attention block, as in the official model.

    ``stage_hook(i, feat) -> Tensor`` is called right after stage ``i + 1`` for i = 0, .., 6 (stage1..stage7)
    with ``feat`` (B, C_i, T, H_i, W_i), C_i = ``embed_dims[i]``, H_i = H / 2**min(i, 6 - i). It must return a
    tensor of the same shape, which replaces the stage output: it feeds the next stage and, after the encoder
    stages 1-4, the skip connection (x1..x4) alike.
    ``feat`` may be a non-contiguous view; don't modify it in place.
    """

    def __init__(self, upscale: int = 4, in_chans: int = 3, out_chans: int = 3,
                 img_size: Sequence[int] = (6, 64, 64), window_size: Sequence[int] = (6, 8, 8),
                 depths: Sequence[int] = (8, 8, 8, 8, 8, 8, 8, 4, 4, 4, 4, 4, 4),
                 indep_reconsts: Sequence[int] = (11, 12),
                 embed_dims: Sequence[int] = (120, 120, 120, 120, 120, 120, 120, 180, 180, 180, 180, 180, 180),
                 num_heads: Sequence[int] = (6,) * 13, mul_attn_ratio: float = 0.75, mlp_ratio: float = 2.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop_path_rate: float = 0.2,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 spynet_path: str | os.PathLike | None = None, pa_frames: int = 2, deformable_groups: int = 16,
                 recal_all_flows: bool = False, nonblind_denoising: bool = False,
                 use_checkpoint_attn: bool = False, use_checkpoint_ffn: bool = False,
                 no_checkpoint_attn_blocks: Sequence[int] = (), no_checkpoint_ffn_blocks: Sequence[int] = ()) -> None:
        super().__init__()
        _check_config(window_size, depths, embed_dims, num_heads, pa_frames)
        self.upscale, self.in_chans, self.out_chans = upscale, in_chans, out_chans
        self.window_size, self.embed_dims = tuple(window_size), tuple(embed_dims)
        self.pa_frames, self.recal_all_flows = pa_frames, recal_all_flows
        self.nonblind_denoising = nonblind_denoising

        first_in = in_chans * (1 + 2 * 4) + (1 if nonblind_denoising else 0)  # frame + 2 x nearest-4 warps
        self.conv_first = FrameConv3d(first_in, embed_dims[0], kernel_size=(1, 3, 3), padding=(0, 1, 1))
        self.spynet = SpyNet(spynet_path, return_levels=(2, 3, 4, 5))
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # also under a meta device
        ckpt_attn = [use_checkpoint_attn and i not in no_checkpoint_attn_blocks for i in range(len(depths))]
        ckpt_ffn = [use_checkpoint_ffn and i not in no_checkpoint_ffn_blocks for i in range(len(depths))]
        common = dict(mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, norm_layer=norm_layer)

        reshapes, scales = ("none", "down", "down", "down", "up", "up", "up"), (1, 2, 4, 8, 4, 2, 1)
        for i in range(7):
            self.add_module(f"stage{i + 1}", Stage(
                embed_dims[i - 1], embed_dims[i], depths[i], num_heads[i], window_size, mul_attn_ratio,
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])], pa_frames=pa_frames,
                deformable_groups=deformable_groups, reshape=reshapes[i], max_residue_magnitude=10 / scales[i],
                use_checkpoint_attn=ckpt_attn[i], use_checkpoint_ffn=ckpt_ffn[i], **common))

        self.stage8 = nn.ModuleList([nn.Sequential(OrderedDict([
            ("1", nn.LayerNorm(embed_dims[6])), ("2", nn.Linear(embed_dims[6], embed_dims[7]))]))])
        for i in range(7, len(depths)):
            window = (1, window_size[1], window_size[2]) if i in indep_reconsts else window_size
            self.stage8.append(RTMSA(embed_dims[i], depths[i], num_heads[i], window,
                                     drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                                     use_checkpoint_attn=ckpt_attn[i], use_checkpoint_ffn=ckpt_ffn[i], **common))
        self.norm = norm_layer(embed_dims[-1])
        self.conv_after_body = nn.Linear(embed_dims[-1], embed_dims[0])

        if upscale == 1:
            self.conv_last = FrameConv3d(embed_dims[0], out_chans, kernel_size=(1, 3, 3), padding=(0, 1, 1))
        else:
            num_feat = 64
            self.conv_before_upsample = nn.Sequential(OrderedDict([
                ("0", FrameConv3d(embed_dims[0], num_feat, kernel_size=(1, 3, 3), padding=(0, 1, 1))),
                ("1", nn.LeakyReLU())]))
            self.upsample = _make_upsample(upscale, num_feat)
            self.conv_last = FrameConv3d(num_feat, out_chans, kernel_size=(1, 3, 3), padding=(0, 1, 1))

    @property
    def required_multiple(self) -> tuple[int, int]:
        """(h, w) that input H and W must be divisible by: the window at the coarsest (1/8) scale."""
        return self.window_size[1] << NUM_DOWNSAMPLINGS, self.window_size[2] << NUM_DOWNSAMPLINGS

    @property
    def min_frames(self) -> int:
        """Fewest input frames: two for mutual attention, and the official flow composition for pa_frames 4/6
        needs pa_frames // 2 + 1."""
        return self.pa_frames // 2 + 1

    def check_input(self, x: Tensor) -> None:
        """Raise ``ValueError`` naming the sizes if ``x`` cannot go through :meth:`forward`."""
        if x.dim() != 5:
            raise ValueError(f"VRT expects input (B, T, C, H, W), got shape {tuple(x.shape)}")
        _, t, c, h, w = x.shape
        chans = self.in_chans + (1 if self.nonblind_denoising else 0)
        if c != chans:
            noise = " + 1 noise-level map" if self.nonblind_denoising else ""
            raise ValueError(f"VRT expects {chans} input channels (in_chans={self.in_chans}{noise}), got C={c} "
                             f"in input shape {tuple(x.shape)}")
        if t < self.min_frames:
            raise ValueError(f"VRT needs at least {self.min_frames} frames (pa_frames={self.pa_frames}), got T={t}")
        mh, mw = self.required_multiple
        if h % mh or w % mw:
            raise ValueError(f"VRT input H={h}, W={w} must be multiples of {mh}x{mw} (window "
                             f"{self.window_size[1]}x{self.window_size[2]} at 1/{1 << NUM_DOWNSAMPLINGS} scale); "
                             f"pad the frames (e.g. by reflection) and crop the output")
        check_size(h, w)

    def forward(self, x: Tensor, stage_hook: StageHook | None = None) -> Tensor:
        self.check_input(x)
        frames = x[:, :, :self.in_chans] if self.nonblind_denoising else x
        return self.upsampled(frames) + self.residual(x, self.get_flows(frames), stage_hook)

    def residual(self, x: Tensor, flows: tuple[Flows, Flows], stage_hook: StageHook | None = None,
                 own: Tensor | None = None) -> Tensor:
        """What the network adds to the (upsampled) input frames: ``x`` as :meth:`forward` takes it, ``flows`` as
        :meth:`get_flows` gives them -> (B, T, out_chans, H * upscale, W * upscale). ``own``: what conv_first sees
        of each frame itself beside its warped neighbours (default: the frame)."""
        noise = None
        if self.nonblind_denoising:
            x, noise = x[:, :, :self.in_chans], x[:, :, self.in_chans:]
        flows_backward, flows_forward = flows
        backward, forward = self._align_input(x, flows_backward[0], flows_forward[0])
        parts = [x if own is None else own, backward, forward] + ([noise] if noise is not None else [])
        feat = self.conv_first(torch.cat([p.permute(0, 1, 3, 4, 2) for p in parts], dim=-1))
        feat = feat + self.conv_after_body(self.forward_features(feat, flows_backward, flows_forward, stage_hook))
        if self.upscale > 1:
            feat = self.upsample(self.conv_before_upsample(feat))
        return self.conv_last(feat).permute(0, 1, 4, 2, 3)

    def upsampled(self, frames: Tensor) -> Tensor:
        """``frames`` (B, T, C, H, W) at the output size (bilinear per frame), the base the residual is added to."""
        if self.upscale == 1:
            return frames
        b, t, _, h, w = frames.shape
        size = (h * self.upscale, w * self.upscale)
        return F.interpolate(frames.flatten(0, 1), size=size, mode="bilinear", align_corners=False).unflatten(0, (b, t))

    def forward_features(self, x: Tensor, flows_backward: Flows, flows_forward: Flows,
                         stage_hook: StageHook | None = None) -> Tensor:
        """Stages 1-8 on channels-last features (B, T, H, W, C); flows as returned by :meth:`get_flows`."""
        skips = []
        for i in range(7):
            scale = min(i, 6 - i)  # stages 5-7 climb back up the scales of stages 3, 2, 1
            if i > NUM_ENCODER_STAGES:
                x = x + skips[7 - i]
            x = getattr(self, f"stage{i + 1}")(x, flows_backward[scale::4], flows_forward[scale::4])
            if stage_hook is not None:
                x = _apply_hook(stage_hook, i, x)
            if i < NUM_ENCODER_STAGES:
                skips.append(x)
        x = x + skips[0]
        for layer in self.stage8:
            x = layer(x)
        return self.norm(x)

    def get_flows(self, x: Tensor) -> tuple[Flows, Flows]:
        """Backward (t+k -> t) and forward (t-k -> t) flows of the frames ``x`` (B, T, C, H, W) as the flow net
        takes them: for k = 1, .., pa_frames // 2, the four scales 1, 1/2, 1/4, 1/8, each
        (B, T - k, 2, H / s, W / s)."""
        return self.multi_hop(*self.one_hop(x))

    def one_hop(self, x: Tensor) -> tuple[Flows, Flows]:
        """The flow net's backward (t+1 -> t) and forward (t -> t+1) flows between neighbouring frames of ``x``,
        per scale (B, T - 1, 2, H / s, W / s)."""
        b, t = x.shape[:2]
        # One flow-net pass for both directions: backward = flow(ref t, supp t+1), forward = the reverse.
        ref = torch.cat((x[:, :-1], x[:, 1:])).flatten(0, 1)
        supp = torch.cat((x[:, 1:], x[:, :-1])).flatten(0, 1)
        pairs = [f.unflatten(0, (2, b, t - 1)) for f in self.spynet(ref, supp)]
        return [f[0] for f in pairs], [f[1] for f in pairs]

    def multi_hop(self, backward: Flows, forward: Flows) -> tuple[Flows, Flows]:
        """One-frame flows (per scale) extended to the ``pa_frames // 2`` hops :meth:`get_flows` returns."""
        if self.pa_frames >= 4:  # two-frame hops: chain two one-frame flows
            backward2 = [_chain(f[:, :-1], f[:, 1:]) for f in backward]
            forward2 = [_chain(f[:, 1:], f[:, :-1]) for f in forward]
        if self.pa_frames == 6:
            backward3 = [_chain(f2[:, :-1], f[:, 2:]) for f, f2 in zip(backward, backward2)]
            forward3 = [_chain(f2[:, 1:], f[:, :-2]) for f, f2 in zip(forward, forward2)]
            return backward + backward2 + backward3, forward + forward2 + forward3
        if self.pa_frames == 4:
            return backward + backward2, forward + forward2
        return backward, forward

    @staticmethod
    def _align_input(x: Tensor, flow_backward: Tensor, flow_forward: Tensor) -> tuple[Tensor, Tensor]:
        """Each frame's next (backward) and previous (forward) frame, warped to it by nearest-4 sampling;
        (B, T, 4C, H, W) each, zeros where there is no neighbour."""
        b, t, c, h, w = x.shape
        src = torch.cat((x[:, 1:], x[:, :-1])).flatten(0, 1)
        flows = torch.cat((flow_backward, flow_forward)).flatten(0, 1)
        warped = flow_warp(src, flows, "nearest4").view(2, b, t - 1, 4 * c, h, w)
        return _pad_frames(warped[0], 1, True), _pad_frames(warped[1], 1, False)


def _chain(first: Tensor, second: Tensor) -> Tensor:
    """Flow over two hops: ``first`` plus ``second`` sampled where ``first`` points. (B, T', 2, H, W)."""
    return first + flow_warp(second.flatten(0, 1), first.flatten(0, 1)).view_as(first)


def _apply_hook(hook: StageHook, i: int, x: Tensor) -> Tensor:
    feat = x.permute(0, 4, 1, 2, 3)
    out = hook(i, feat)
    if not isinstance(out, Tensor) or out.shape != feat.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"stage_hook must return a tensor of the stage output's shape {tuple(feat.shape)} "
                         f"after stage {i + 1}, got {got}")
    return out.permute(0, 2, 3, 4, 1)


def _check_config(window_size: Sequence[int], depths: Sequence[int], embed_dims: Sequence[int],
                  num_heads: Sequence[int], pa_frames: int) -> None:
    if pa_frames not in (2, 4, 6):
        raise ValueError(f"pa_frames={pa_frames} is not supported: use 2, 4 or 6 (0, VRT's frame-interpolation "
                         f"variant, is not implemented)")
    if len(window_size) != 3:
        raise ValueError(f"window_size must be (frames, height, width), got {tuple(window_size)}")
    if not len(depths) == len(embed_dims) == len(num_heads) or len(depths) < 8:
        raise ValueError(f"depths, embed_dims and num_heads need one entry per stage (>= 8, equal lengths), got "
                         f"{len(depths)}, {len(embed_dims)}, {len(num_heads)}")
    for i, (dim, heads) in enumerate(zip(embed_dims, num_heads)):
        if dim % heads or dim % 2:
            raise ValueError(f"embed_dims[{i}]={dim} must be even and divisible by num_heads[{i}]={heads}")


def required_multiple(model: nn.Module) -> tuple[int, int]:
    """(h, w) the input H and W of ``model`` (a VRT or a module containing one) must be divisible by."""
    for module in model.modules():
        if isinstance(module, VRT):
            return module.required_multiple
    raise ValueError(f"{type(model).__name__} contains no VRT backbone")


def load_vrt_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load VRT weights from a local file: an official release (``{'params': state_dict}``, e.g.
    006_VRT_videodeblurring_GoPro.pth) or a plain state dict. Strict: any missing, unexpected or misshapen key is a
    ``ValueError`` naming them."""
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"VRT weights not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and "params" in state:
        state = state["params"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict (or {{'params': state_dict}})")
    load_exactly(model, state, f"VRT weights {path}", "The model must be built with the configuration the file was "
                 "trained with (e.g. the vrt_gopro preset for the GoPro model).")
