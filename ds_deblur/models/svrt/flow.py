"""VRT's optical-flow network as S-VRT makes it pluggable: SpyNet on RGB frames or SCFlow on spike windows.

``FlowNet`` plays the part of S-VRT's flow wrapper: VRT keeps it as ``spynet``, so every flow parameter is named
``spynet.model.*`` whichever network it is. ``build_flow`` reads ``netG.optical_flow`` (``module``, ``checkpoint``,
``params``). Unlike S-VRT, which prints a warning and goes on with random weights, a checkpoint that is missing or does
not fit is an error.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from ds_deblur.errors import ConfigError, WeightsNotFoundError
from ds_deblur.models.spynet import SpyNet, load_spynet_weights
from ds_deblur.models.svrt.scflow import SCFlow, load_scflow_weights

# SpyNet's pyramid levels for full, 1/2, 1/4 and 1/8 resolution: the four scales VRT aligns at.
SPYNET_LEVELS = (2, 3, 4, 5)
_MODULES = {"spynet": "spynet", "spy": "spynet", "scflow": "scflow", "spike_flow": "scflow"}
_UNSUPPORTED = ("sea_raft", "searaft")
# S-VRT's wrapper arguments; 'device' is accepted and ignored: the engine places the model.
_PARAMS = {"spynet": ("device",), "scflow": ("device", "batch_norm", "dt")}


class FlowNet(nn.Module):
    """``model`` (SpyNet or SCFlow) behind one interface: ``forward(ref, supp)`` -> four flows, full resolution first.

    ``input_type`` tells VRT what to feed it: ``'rgb'`` frames (N, 3, H, W) or ``'spike'`` windows (N, 25, H, W).
    """

    def __init__(self, model: nn.Module, input_type: str) -> None:
        super().__init__()
        self.model = model
        self.input_type = input_type

    def forward(self, ref: Tensor, supp: Tensor) -> list[Tensor]:
        # As S-VRT: while every flow parameter is frozen no graph is built through the flow net, not even back to
        # its inputs.
        track = torch.is_grad_enabled() and any(p.requires_grad for p in self.model.parameters())
        with torch.set_grad_enabled(track):
            return self.model(ref, supp)


def build_flow(module: str, checkpoint: str | os.PathLike | None, params: Mapping[str, Any] | None) -> FlowNet:
    """Build ``netG.optical_flow``: ``module`` 'spynet' (alias 'spy') or 'scflow' (alias 'spike_flow'), any case.

    ``checkpoint``: a local weights file, or None / '' for S-VRT's random initialisation (PyTorch's default: S-VRT's
    SCFlow ``init_weights`` matches no layer). ``params`` (None: none): spynet takes ``device``; scflow ``device``,
    ``batch_norm`` (bool) and ``dt`` (> 0, the slice spacing for an initial flow).
    """
    name = _module_name(module)
    options = _check_params(name, params or {})
    if checkpoint and not os.path.isfile(checkpoint):
        raise WeightsNotFoundError(f"netG.optical_flow.checkpoint: {module} weights not found: {checkpoint}")
    if name == "spynet":
        spynet = SpyNet(return_levels=SPYNET_LEVELS)
        if checkpoint:
            load_spynet_weights(spynet, checkpoint)
        return FlowNet(spynet, "rgb")
    scflow = SCFlow(batch_norm=options.get("batch_norm", False), dt=options.get("dt", 10.0))
    if checkpoint:
        load_scflow_weights(scflow, checkpoint)
    return FlowNet(scflow, "spike")


def _module_name(module: str) -> str:
    key = str(module).lower()
    if key in _UNSUPPORTED:
        raise ConfigError(f"netG.optical_flow.module {module!r} (SEA-RAFT) is not supported here: use spynet or "
                          f"scflow")
    if key not in _MODULES:
        raise ConfigError(f"netG.optical_flow.module must be one of spynet, scflow, got {module!r}")
    return _MODULES[key]


def _check_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(params) - set(_PARAMS[name]))
    if unknown:
        raise ConfigError(f"netG.optical_flow.params.{unknown[0]} is not an option of {name} "
                          f"(known: {', '.join(_PARAMS[name])})")
    options = dict(params)
    if not isinstance(options.get("batch_norm", False), bool):
        raise ConfigError(f"netG.optical_flow.params.batch_norm must be true or false, got {options['batch_norm']!r}")
    dt = options.get("dt", 10.0)
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or dt <= 0:
        raise ConfigError(f"netG.optical_flow.params.dt must be a number > 0, got {dt!r}")
    return options
