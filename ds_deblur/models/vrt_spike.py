"""VRT with the spike branch fused after encoder stages 1-4 through the backbone's ``stage_hook``."""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from ds_deblur.models.fusion import MultiScaleFuse
from ds_deblur.models.spike import SpikeEncoder3D, SpikeTemporalSA


class VRTWithSpike(nn.Module):
    """``model(blur (B,T,3,H,W), spike_vox (B,T,C,H,W), flow_spike=None) -> (B,T,3,H,W)``; ``spike_bins`` = C, the
    spike input's channels per frame (voxel bins, TFP images or raw frames: ``DataConfig.spike_channels``).

    Spike input -> SpikeEncoder3D -> SpikeTemporalSA give one feature per scale; after VRT encoder stage i
    the RGB feature (queries) is fused with spike feature i (keys/values) by ``cross_attn_fuse[i]``. Parameter
    names are the original S-VRT model's (``spike_temporal_sa.blocks.N.ln1``, ``cross_attn_fuse.fuse_blocks.N.*``).
    With ``use_spike=False`` the spike modules are not built and ``spike_vox`` is ignored: plain VRT. The backbone
    stays the submodule ``vrt`` so official VRT weights load into ``model.vrt`` unchanged.
    """

    def __init__(self, vrt: nn.Module, spike_bins: int, channels_per_scale: Sequence[int], use_spike: bool = True,
                 spike_res_blocks: int = 2, tsa: Optional[dict[str, Any]] = None,
                 fuse: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        self.vrt = vrt
        self.use_spike = use_spike
        if not use_spike:
            return
        self.spike_encoder = SpikeEncoder3D(spike_bins, channels_per_scale, num_res_blocks=spike_res_blocks)
        self.spike_temporal_sa = SpikeTemporalSA(channels_per_scale, **(tsa or {}))
        self.cross_attn_fuse = MultiScaleFuse(channels_per_scale, **(fuse or {}))

    @property
    def size_multiple(self) -> int:
        """H and W must be multiples of this (pad first, as ds_deblur.inference.tiling does): VRT's coarsest window."""
        return max(self.vrt.required_multiple)

    def forward(self, blur: torch.Tensor, spike_vox: torch.Tensor,
                flow_spike: Optional[torch.Tensor] = None) -> torch.Tensor:
        # flow_spike (S-VRT's SCFlow input) is accepted so that every model is called alike; SpyNet needs none.
        if not self.use_spike:
            return self.vrt(blur)
        b, t, _, h, w = blur.shape
        if spike_vox.dim() != 5 or spike_vox.shape[:2] != (b, t) or spike_vox.shape[3:] != (h, w):
            raise ValueError(f"spike_vox {tuple(spike_vox.shape)} must be (B, T, C, H, W) matching blur "
                             f"{tuple(blur.shape)} in B, T, H, W")
        spike_feats = self.spike_temporal_sa(self.spike_encoder(spike_vox))

        def fuse_after_stage(i: int, feat: torch.Tensor) -> torch.Tensor:
            return self.cross_attn_fuse(i, feat, spike_feats[i]) if i < len(spike_feats) else feat

        return self.vrt(blur, stage_hook=fuse_after_stage)


# Legacy ds_deblur parameter names (spike branch and fusion only) and the original model's names they map to.
_LEGACY_NAMES = (
    (re.compile(r"^spike_temporal_sa\.blocks\.(\d+)\.norm_q\."), r"spike_temporal_sa.blocks.\1.ln1."),
    (re.compile(r"^spike_temporal_sa\.blocks\.(\d+)\.norm_ffn\."), r"spike_temporal_sa.blocks.\1.ln2."),
    (re.compile(r"^spike_temporal_sa\.blocks\.(\d+)\.ffn\."), r"spike_temporal_sa.blocks.\1.mlp."),
    (re.compile(r"^cross_attn_fuse\.(\d+)\.norm_(q|kv|ffn)\."), r"cross_attn_fuse.fuse_blocks.\1.ln_\2."),
    (re.compile(r"^cross_attn_fuse\.(\d+)\.attn\."), r"cross_attn_fuse.fuse_blocks.\1.attn.attn."),
    (re.compile(r"^cross_attn_fuse\.(\d+)\.ffn\."), r"cross_attn_fuse.fuse_blocks.\1.ffn."),
)


def rename_legacy_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """A state dict with legacy ds_deblur names (``cross_attn_fuse.N.norm_q``, ``spike_temporal_sa.blocks.N.norm_q``,
    ...) under the original model's names, in the same order; other keys unchanged."""
    renamed = {}
    for key, value in state_dict.items():
        for pattern, replacement in _LEGACY_NAMES:
            key, count = pattern.subn(replacement, key)
            if count:
                break
        renamed[key] = value
    return renamed
