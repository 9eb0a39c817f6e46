"""Model presets (MODEL.PRESET) and ``build_model(cfg)``.

A preset fixes the VRT backbone arguments (official argument names) and the spike branch's depth; a VRT options
file (``MODEL.VRT_CFG``) replaces its ``img_size``/``window_size``, the ``MODEL.VRT.*`` keys override single
backbone values, ``MODEL.CHANNELS_PER_SCALE`` sets the spike widths.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import yaml
from torch import nn

from ds_deblur.errors import ConfigError
from ds_deblur.models.lora import inject_lora
from ds_deblur.models.svrt.net import SVRTNet
from ds_deblur.models.svrt.options import parse_net_options
from ds_deblur.models.vrt import VRT
from ds_deblur.models.vrt_spike import VRTWithSpike

# MODEL.VRT key -> VRT constructor argument, for keys that replace a preset value when not None
_VRT_OVERRIDES = {
    "EMBED_DIMS": "embed_dims", "DEPTHS": "depths", "NUM_HEADS": "num_heads", "WINDOW_SIZE": "window_size",
    "PA_FRAMES": "pa_frames", "DEFORMABLE_GROUPS": "deformable_groups", "INDEP_RECONSTS": "indep_reconsts",
    "MLP_RATIO": "mlp_ratio",
}


def _img_size(clip_len: int, crop: Union[int, Sequence[int]]) -> list[int]:
    """VRT's img_size [T, H, W] for a square crop size or an [H, W] one (VRT accepts it and does not use it)."""
    height, width = (crop, crop) if isinstance(crop, int) else crop
    return [clip_len, height, width]


def _tiny(clip_len: int, crop: Union[int, Sequence[int]]) -> dict[str, Any]:
    # Small enough for a DeepSpeed demo on 2 CPU ranks (64x64 crops, a few frames): 8 stages of width 16.
    return dict(img_size=_img_size(clip_len, crop), window_size=[2, 8, 8], depths=[2] * 7 + [2],
                indep_reconsts=[7], embed_dims=[16] * 8, num_heads=[2] * 8, pa_frames=2, deformable_groups=4,
                drop_path_rate=0.0, spike_res_blocks=1, identity_init=True)


def _base(clip_len: int, crop: Union[int, Sequence[int]]) -> dict[str, Any]:
    # The original project's model: VRT's 13-stage layout at width 96, temporal window = the whole clip.
    return dict(img_size=_img_size(clip_len, crop), window_size=[clip_len, 8, 8], depths=[8] * 7 + [4] * 6,
                indep_reconsts=[11, 12], embed_dims=[96] * 13, num_heads=[6] * 13, pa_frames=2,
                deformable_groups=16, spike_res_blocks=2)


def _vrt_gopro(clip_len: int, crop: Union[int, Sequence[int]]) -> dict[str, Any]:
    # Official VRT video deblurring (GoPro) configuration, so its released weights load into model.vrt.
    return dict(img_size=[6, 192, 192], window_size=[6, 8, 8], depths=[8] * 7 + [4] * 4, indep_reconsts=[9, 10],
                embed_dims=[96] * 7 + [120] * 4, num_heads=[6] * 11, pa_frames=2, deformable_groups=16,
                spike_res_blocks=2)


PRESETS = {"tiny": _tiny, "base": _base, "vrt_gopro": _vrt_gopro}


# Preset entries that are not VRT constructor arguments.
_BUILD_OPTIONS = {"spike_res_blocks": 2, "identity_init": False}


def vrt_arguments(cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The VRT constructor arguments for ``cfg`` (preset + MODEL.VRT overrides) and the preset's build options
    (``spike_res_blocks``: residual depth of the spike encoder; ``identity_init``: start as the identity)."""
    model_cfg = cfg.MODEL
    kwargs = PRESETS[model_cfg.PRESET](cfg.DATA.CLIP_LEN, cfg.DATA.crop_hw)
    options = {key: kwargs.pop(key, default) for key, default in _BUILD_OPTIONS.items()}
    kwargs.update(vrt_options(model_cfg.VRT_CFG))
    for key, arg in _VRT_OVERRIDES.items():
        value = getattr(model_cfg.VRT, key)
        if value is not None:
            kwargs[arg] = value
    kwargs.update(upscale=1, in_chans=3, out_chans=3, spynet_path=model_cfg.VRT.SPYNET_PATH,
                  use_checkpoint_attn=model_cfg.VRT.USE_CHECKPOINT_ATTN,
                  use_checkpoint_ffn=model_cfg.VRT.USE_CHECKPOINT_FFN)
    return kwargs, options


def vrt_options(path: Optional[str]) -> dict[str, list[int]]:
    """``img_size`` and ``window_size`` of a VRT options file (KAIR style, under ``netG``; YAML or JSON) when it
    has them. A missing file is a warning and nothing is read, as in the original trainer."""
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        warnings.warn(f"MODEL.VRT_CFG {path} not found: using the preset's VRT img_size and window_size",
                      UserWarning, stacklevel=3)
        return {}
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"MODEL.VRT_CFG {path} is not valid YAML/JSON: {err}") from None
    net = data.get("netG", data) if isinstance(data, dict) else None
    if not isinstance(net, dict):
        raise ConfigError(f"MODEL.VRT_CFG {path} must be a mapping with a netG section (KAIR's VRT options)")
    found = {key: net[key] for key in ("img_size", "window_size") if net.get(key) is not None}
    for key, value in found.items():
        if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) and v >= 1 for v in value)):
            raise ConfigError(f"MODEL.VRT_CFG {path}: netG.{key} must be [T, H, W] of positive integers, got {value!r}")
    return found


def _spike_channels(cfg: Any, embed_dims: list[int]) -> list[int]:
    """MODEL.CHANNELS_PER_SCALE, or the widths of VRT stages 1-4 when it is null; they must match."""
    if cfg.MODEL.CHANNELS_PER_SCALE is None:
        return list(embed_dims[:4])
    channels = list(cfg.MODEL.CHANNELS_PER_SCALE)
    if channels != list(embed_dims[:4]):
        raise ValueError(
            f"MODEL.CHANNELS_PER_SCALE={channels} must equal the VRT widths of encoder stages 1-4, "
            f"MODEL.VRT.EMBED_DIMS[:4]={list(embed_dims[:4])} (preset {cfg.MODEL.PRESET!r}"
            f"{'' if cfg.MODEL.VRT.EMBED_DIMS is None else ' overridden by MODEL.VRT.EMBED_DIMS'}); "
            f"set MODEL.CHANNELS_PER_SCALE={list(embed_dims[:4])}, or MODEL.USE_SPIKE=false for plain VRT")
    return channels


def build_model(cfg: Any) -> nn.Module:
    """The deblurring model described by ``cfg.MODEL`` (and DATA.CLIP_LEN/CROP_SIZE), called as
    ``model(blur (B,T,3,H,W), spike (B,T,C,H,W), flow_spike=None) -> (B,T,3,H,W)`` with C =
    ``cfg.DATA.spike_channels`` (the spike representation's width: DATA.K voxel bins or TFP images, or
    DATA.RAW_WINDOW_LENGTH raw frames). With MODEL.NETG (an S-VRT option file's netG) it is S-VRT's network
    (:class:`SVRTNet`, S-VRT's parameter names); otherwise the preset's :class:`VRTWithSpike`, backbone
    ``model.vrt``. With MODEL.LORA_RANK, LoRA adapters on the linear layers MODEL.LORA_TARGETS names."""
    model = build_svrt(cfg) if cfg.MODEL.NETG is not None else _build_vrt_spike(cfg)
    if cfg.MODEL.LORA_RANK:
        inject_lora(model, cfg.MODEL.LORA_TARGETS, cfg.MODEL.LORA_RANK, cfg.MODEL.LORA_ALPHA)
    return model


def _build_vrt_spike(cfg: Any) -> VRTWithSpike:
    vrt_kwargs, options = vrt_arguments(cfg)
    use_spike = bool(cfg.MODEL.USE_SPIKE)
    channels = _spike_channels(cfg, vrt_kwargs["embed_dims"]) if use_spike else []
    m = cfg.MODEL
    vrt = VRT(**vrt_kwargs)
    identity = options["identity_init"] if m.IDENTITY_INIT is None else m.IDENTITY_INIT
    if identity:
        start_as_identity(vrt)
    return VRTWithSpike(
        vrt, spike_bins=cfg.DATA.spike_channels, channels_per_scale=channels, use_spike=use_spike,
        spike_res_blocks=options["spike_res_blocks"],
        tsa=dict(heads=m.SPIKE_TSA.HEADS, mlp_ratio=m.SPIKE_TSA.MLP_RATIO, chunk_pixels=m.SPIKE_TSA.CHUNK_PIXELS),
        fuse=dict(heads=m.FUSE.HEADS, mlp_ratio=m.FUSE.MLP_RATIO, chunk_pixels=m.FUSE.CHUNK_PIXELS,
                  frame_distance_penalty=m.FUSE.FRAME_DISTANCE_PENALTY))


def build_svrt(cfg: Any) -> SVRTNet:
    """S-VRT's network for MODEL.NETG, checked against the data it will be given."""
    options = parse_net_options(cfg.MODEL.NETG, cfg.DATA.SPIKE_REPR)
    if options.spike_chans != cfg.DATA.spike_channels:
        raise ConfigError(f"netG's in_chans {options.in_chans} = RGB 3 + {options.spike_chans} spike channels, but "
                          f"the data gives {cfg.DATA.spike_channels} per frame (DATA.SPIKE_REPR "
                          f"{cfg.DATA.SPIKE_REPR}): make netG.input.raw_ingress_chans (or netG.in_chans) "
                          f"{3 + cfg.DATA.spike_channels}, or change the data's spike channels")
    if options.flow_module == "scflow" and cfg.DATA.FLOW_SPIKE != "encoding25":
        raise ConfigError("netG.optical_flow.module scflow needs SCFlow's encoding25 windows: set DATA.FLOW_SPIKE "
                          "encoding25 (S-VRT's datasets.*.spike_flow.representation)")
    model = SVRTNet(options, cfg.DATA.FLOW_SPIKE_POLICY)
    if cfg.MODEL.IDENTITY_INIT:  # S-VRT itself does not
        start_as_identity(model)
    return model


def start_as_identity(vrt: VRT) -> None:
    """Zero VRT's last conv: output = blurry input. Short CPU runs (the demos) start so, and their few hundred steps
    go into deblurring rather than into undoing a random residual; the architecture is unchanged."""
    nn.init.zeros_(vrt.conv_last.weight)
    nn.init.zeros_(vrt.conv_last.bias)
