"""S-VRT's current network (github S-VRT/S-VRT @2ac8c0b): the official VRT backbone fed by a fusion of RGB and spike
input, with SpyNet or SCFlow flow.

``SVRTNet(options)(blur (B,T,3,H,W), spike (B,T,S,H,W), flow_spike=None) -> (B,T,3,H,W)``. Its ``state_dict()``
has S-VRT's keys, shapes and order for the same ``netG`` options: the fusion operator registered twice
(``fusion_operator.*`` and ``fusion_adapter.operator.*``) ahead of the backbone, the flow net under
``spynet.model.*`` whichever it is, VRT's own keys unprefixed.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ds_deblur.models.deform_conv import flow_warp
from ds_deblur.models.svrt.adapters import EarlyAdapter, HybridAdapter, MiddleAdapter
from ds_deblur.models.svrt.dcnv4 import DCNv4PackFlowGuided
from ds_deblur.models.svrt.flow import build_flow
from ds_deblur.models.svrt.fusion import build_operator
from ds_deblur.models.svrt.options import NetOptions
from ds_deblur.models.svrt.pase_encoder import PixelAdaptiveSpikeEncoder
from ds_deblur.models.svrt.reducers import build_reducer
from ds_deblur.models.vrt import VRT, Flows

# S-VRT registers these ahead of VRT's own modules (conv_first, spynet, stages, ...); state dicts keep that order.
_LEADING = ("spike_encoder", "fusion_operator", "fusion_adapter", "conv_first", "restoration_reducer")


class SVRTNet(VRT):
    """VRT restoring the fused frames; the residual is added to the blurry RGB input, as in S-VRT."""

    # Set by the trainer for S-VRT's phases (ds_deblur.phases): the forward returns the fused frames without
    # running the backbone (phase 1), or keeps them as ``last_fused`` for the fusion loss (phase 2).
    fusion_only = False
    keep_fused = False
    last_fused: Optional[Tensor] = None

    def __init__(self, options: NetOptions, flow_policy: str = "mean_windows") -> None:
        super().__init__(in_chans=options.backbone_in_chans, **options.vrt)
        self.options, self.flow_policy = options, flow_policy
        if options.dcn_type == "DCNv4":
            self._use_dcnv4(options)
        if options.pase_encoder is not None:
            self.spike_encoder = PixelAdaptiveSpikeEncoder(options.in_chans, options.in_chans, **options.pase_encoder)
        if options.fusion:
            self._build_fusion(options)
        if options.output_mode == "restoration":
            self.restoration_reducer = build_reducer(options.reducer)
        self.spynet = build_flow(options.flow_module, options.flow_checkpoint, options.flow_params)
        leading = [name for name in _LEADING if name in self._modules]
        self._modules = {name: self._modules[name] for name in leading + [n for n in self._modules if n not in leading]}

    def _use_dcnv4(self, o: NetOptions) -> None:
        for i in range(1, 8):
            stage = getattr(self, f"stage{i}")
            dim = stage.pa_deform.in_channels
            stage.pa_deform = DCNv4PackFlowGuided(dim, dim, 3, padding=1, deformable_groups=o.vrt["deformable_groups"],
                                                  pa_frames=o.vrt["pa_frames"], apply_softmax=o.dcn_apply_softmax)

    def _build_fusion(self, o: NetOptions) -> None:
        def operator(rgb: int, spike: int, out: int) -> nn.Module:
            return build_operator(o.operator, rgb, spike, out, o.operator_params)

        if o.placement in ("early", "hybrid"):
            self.fusion_operator = operator(3, o.early_operator_spike_chans, o.early_out_chans)
            early = EarlyAdapter(self.fusion_operator, o.spike_chans, o.contract)
        if o.placement in ("middle", "hybrid"):
            spike_ctx_chans = 1 if o.placement == "hybrid" else o.spike_chans
            middle = MiddleAdapter(operator(o.middle_out_chans, spike_ctx_chans, o.middle_out_chans),
                                   o.inject_stages, o.mode)
        if o.placement == "early":
            self.fusion_adapter = early
        elif o.placement == "middle":
            self.fusion_operator = middle.operator
            self.fusion_adapter = middle
        else:
            self.fusion_adapter = HybridAdapter(early, middle)

    def with_backbone(self, official: dict[str, Tensor]) -> dict[str, Tensor]:
        """This model's state dict with an official VRT release's weights (``{'params': ...}``'s dict) in the
        backbone: SpyNet's under ``spynet.model.*`` (dropped when the flow net is SCFlow), fusion modules kept.
        A backbone key the file lacks, or has in another shape (e.g. conv_first under the concat strategy), is a
        ``ValueError`` naming it."""
        state = self.state_dict()
        renamed = {("spynet.model." + k[len("spynet."):] if k.startswith("spynet.") else k): v
                   for k, v in official.items()}
        if self.needs_flow_spike:
            renamed = {k: v for k, v in renamed.items() if not k.startswith("spynet.")}
        backbone = [k for k in state if not k.startswith(_LEADING[:3] + ("restoration_reducer.",))
                    and not (self.needs_flow_spike and k.startswith("spynet."))]
        missing = [k for k in backbone if k not in renamed]
        misshapen = [f"{k} file {tuple(renamed[k].shape)} model {tuple(state[k].shape)}" for k in backbone
                     if k in renamed and renamed[k].shape != state[k].shape]
        if missing or misshapen:
            raise ValueError(f"the VRT weights do not fit this network's backbone: missing {missing[:4]}, "
                             f"misshapen {misshapen[:4]} (an official release fits early fusion with the "
                             f"release's own VRT sizes)")
        return {**state, **{k: renamed[k] for k in backbone}}

    @property
    def size_multiple(self) -> int:
        return max(self.required_multiple)

    @property
    def needs_flow_spike(self) -> bool:
        return self.spynet.input_type == "spike"

    def forward(self, blur: Tensor, spike: Tensor,  # type: ignore[override]
                flow_spike: Optional[Tensor] = None) -> Tensor:
        o = self.options
        b, t, _, h, w = blur.shape
        if spike.dim() != 5 or spike.shape[:2] != (b, t) or spike.shape[2] != o.spike_chans:
            raise ValueError(f"spike {tuple(spike.shape)} must be (B, T, {o.spike_chans}, H, W) for blur "
                             f"{tuple(blur.shape)}: netG's in_chans {o.in_chans} = RGB 3 + {o.spike_chans}")
        frames, per_exposure = self._backbone_frames(blur, spike)
        if self.fusion_only or self.keep_fused:
            # One fused frame per input frame: of expanded sub-frames the centre one, as S-VRT's loss takes them.
            fused = frames if per_exposure == 1 else frames[:, per_exposure // 2::per_exposure]
            if self.fusion_only:
                return fused
            self.last_fused = fused
        self.check_input(frames)
        flows = self._flows(frames, per_exposure, flow_spike)
        own = None
        if o.pase_encoder is not None:  # S-VRT encodes each frame itself, not the neighbours warped to it
            own = self.spike_encoder(frames.flatten(0, 1)).unflatten(0, frames.shape[:2])
        out = self.residual(frames, flows, self._stage_hook(blur, spike), own)
        base = self.upsampled(blur)
        if per_exposure == 1:
            return out + base
        if o.output_mode == "restoration":
            return self.restoration_reducer(out, per_exposure, base) + base
        return out + base.repeat_interleave(per_exposure, dim=1)

    def _backbone_frames(self, blur: Tensor, spike: Tensor) -> tuple[Tensor, int]:
        """The frames VRT restores and how many of them make one exposure."""
        placement = self.options.placement
        if placement == "early":
            return self.fusion_adapter(blur, spike)
        if placement == "hybrid":
            return self.fusion_adapter.early_adapter(blur, spike)
        return torch.cat([blur, spike], dim=2), 1

    def _stage_hook(self, blur: Tensor, spike: Tensor):
        placement = self.options.placement
        if placement not in ("middle", "hybrid"):
            return None
        middle = self.fusion_adapter if placement == "middle" else self.fusion_adapter.middle_adapter
        # Hybrid fusion runs on sub-frames: every spike channel is a frame of one channel.
        spike_ctx = spike.flatten(1, 2).unsqueeze(1) if placement == "hybrid" else spike.transpose(1, 2)
        return lambda i, feat: middle(i + 1, feat, spike_ctx)

    def _flows(self, frames: Tensor, per_exposure: int, flow_spike: Optional[Tensor]) -> tuple[Flows, Flows]:
        if not self.needs_flow_spike:
            return self.get_flows(frames[:, :, :3])
        steps, (h, w) = frames.shape[1], frames.shape[-2:]
        if flow_spike is None or flow_spike.dim() != 5 or flow_spike.shape[2] != 25 or flow_spike.shape[3:] != (h, w):
            got = None if flow_spike is None else tuple(flow_spike.shape)
            raise ValueError(f"SCFlow (netG.optical_flow.module scflow) needs flow_spike (B, N, 25, {h}, {w}) "
                             f"(DATA.FLOW_SPIKE encoding25), got {got}")
        windows = flow_spike.shape[1]
        if self.flow_policy == "compose_subframes" and per_exposure == 1 and windows % steps == 0 \
                and windows > steps:
            return self._composed_flows(flow_spike, windows // steps)
        if windows != steps:
            if windows % steps:
                raise ValueError(f"flow_spike has {windows} windows for {steps} restored frames: give one window "
                                 f"per frame or DATA.FLOW_SPIKE_SUBFRAMES per frame")
            # mean_windows: one window per frame, the mean of its sub-frame windows
            flow_spike = flow_spike.unflatten(1, (steps, windows // steps)).mean(dim=2)
        return self.get_flows(flow_spike)

    def _composed_flows(self, flow_spike: Tensor, subframes: int) -> tuple[Flows, Flows]:
        """compose_subframes: flows between neighbouring sub-frame windows, chained from the middle sub-frame of
        one frame to the middle sub-frame of the next."""
        anchor, frames = subframes // 2, flow_spike.shape[1] // subframes
        spans = [(i * subframes + anchor, (i + 1) * subframes + anchor) for i in range(frames - 1)]
        backward, forward = self.one_hop(flow_spike)
        return self.multi_hop(
            [torch.stack([_compose(f, a, z, reverse=False) for a, z in spans], dim=1) for f in backward],
            [torch.stack([_compose(f, a, z, reverse=True) for a, z in spans], dim=1) for f in forward])


def _compose(flows: Tensor, start: int, end: int, reverse: bool) -> Tensor:
    """Flows (B, N, 2, H, W) of steps start..end-1 chained into one, from the first step (or, ``reverse``, the last),
    each further step sampled where the chain so far points (border padding)."""
    steps = range(end - 2, start - 1, -1) if reverse else range(start + 1, end)
    total = flows[:, end - 1 if reverse else start]
    for i in steps:
        total = total + flow_warp(flows[:, i], total, padding_mode="border")
    return total
