"""S-VRT's ``netG`` options (KAIR option files, github S-VRT/S-VRT @2ac8c0b) read into one validated record.

Every rule S-VRT's VRT constructor enforces is checked here, before anything is built, and every error names the
option (``netG.fusion.operator``, ...) and what to write instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.dcnv4 import kernel_function

OPERATORS = ("concat", "gated", "attention", "pase", "pase_residual", "mamba", "dual_scale_temporal_mamba")
PLACEMENTS = ("early", "middle", "hybrid")
CONTRACTS = ("operator_default", "collapsed", "expanded")
# Operators whose early fusion sees all of a frame's spike channels at once (the others see one at a time).
_STRUCTURED = ("pase_residual", "dual_scale_temporal_mamba")
_COLLAPSED_BY_DEFAULT = ("mamba", "attention", "dual_scale_temporal_mamba")
_COLLAPSING = sorted(set(_COLLAPSED_BY_DEFAULT + _STRUCTURED))
_EARLY_ONLY = ("mamba", "attention", "pase_residual", "dual_scale_temporal_mamba")
_RAW_WINDOW_OPERATORS = ("pase_residual", "dual_scale_temporal_mamba")
FLOW_NETS = ("spynet", "scflow")
FLOW_POLICIES = ("mean_windows", "compose_subframes")
REDUCERS = ("index", "selector", "residual_selector")
# netG keys S-VRT's define_G reads without a default: the backbone's shape.
_REQUIRED = ("window_size", "depths", "indep_reconsts", "embed_dims", "num_heads", "pa_frames", "deformable_groups")


@dataclass(frozen=True)
class NetOptions:
    """What ``netG`` selects. ``in_chans`` is the raw ingress width (RGB 3 + spike channels per frame)."""

    vrt: dict[str, Any]
    in_chans: int
    strategy: str = "concat"
    placement: Optional[str] = None
    operator: Optional[str] = None
    mode: str = "replace"
    early_out_chans: int = 3
    middle_out_chans: int = 3
    requested_contract: str = "operator_default"
    contract: str = "expanded"
    inject_stages: tuple[int, ...] = ()
    operator_params: dict[str, Any] = field(default_factory=dict)
    output_mode: str = "restoration"
    reducer: dict[str, Any] = field(default_factory=dict)
    flow_module: str = "spynet"
    flow_checkpoint: Optional[str] = None
    flow_params: dict[str, Any] = field(default_factory=dict)
    dcn_type: str = "DCNv2"
    dcn_apply_softmax: bool = False
    pase_encoder: Optional[dict[str, Any]] = None

    @property
    def fusion(self) -> bool:
        return self.strategy == "fusion"

    @property
    def spike_chans(self) -> int:
        return self.in_chans - 3

    @property
    def backbone_in_chans(self) -> int:
        """Channels per frame the VRT backbone restores: the fused image's after early/hybrid fusion."""
        return self.early_out_chans if self.placement in ("early", "hybrid") else self.in_chans

    @property
    def early_operator_spike_chans(self) -> int:
        return self.spike_chans if self.operator in _STRUCTURED else 1


def _section(net: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = net.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"netG.{name} must be a mapping, got {value!r}")
    return value


def _choice(value: Any, choices: tuple[str, ...], key: str) -> str:
    text = str(value).strip().lower()
    if text not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return text


def _vrt_arguments(net: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in _REQUIRED if net.get(k) is None]
    if missing:
        raise ConfigError(f"netG is missing {', '.join('netG.' + k for k in missing)}: S-VRT's VRT needs them")
    if net.get("net_type", "vrt") != "vrt":
        raise ConfigError(f"netG.net_type must be 'vrt' (S-VRT's VRT family), got {net.get('net_type')!r}")
    if net.get("nonblind_denoising"):
        raise ConfigError("netG.nonblind_denoising=true (a noise-level input for denoising) is not supported for "
                          "deblurring: set it to false")
    if net.get("use_sgp"):
        raise ConfigError("netG.use_sgp=true (S-VRT's SGP blocks) is not supported: set it to false")
    args = {k: net[k] for k in _REQUIRED}
    args.update(upscale=int(net.get("upscale", 1)), out_chans=int(net.get("out_chans", 3)),
                img_size=net.get("img_size") or [6, 64, 64],
                use_checkpoint_attn=bool(net.get("use_checkpoint_attn", False)),
                use_checkpoint_ffn=bool(net.get("use_checkpoint_ffn", False)),
                no_checkpoint_attn_blocks=list(net.get("no_checkpoint_attn_blocks") or []),
                no_checkpoint_ffn_blocks=list(net.get("no_checkpoint_ffn_blocks") or []))
    for key in ("mul_attn_ratio", "mlp_ratio", "qkv_bias", "qk_scale", "drop_path_rate"):
        if key in net:
            args[key] = net[key]
    return args


def _inject_stages(fusion: Mapping[str, Any], embed_dims: list[int], middle_out: int) -> tuple[tuple[int, ...], int]:
    """The stages middle fusion writes into and their (single) width."""
    stages = fusion.get("inject_stages") or []
    if not isinstance(stages, (list, tuple)):
        raise ConfigError(f"netG.fusion.inject_stages must be a list of stage numbers 1-7, got {stages!r}")
    bad = [s for s in stages if not isinstance(s, int) or isinstance(s, bool) or not 1 <= s <= 7]
    if bad:
        raise ConfigError(f"netG.fusion.inject_stages must be integers in [1, 7], got {bad}")
    if not stages:
        return (), embed_dims[0]
    dims = sorted({embed_dims[s - 1] for s in stages})
    if len(dims) > 1:
        raise ConfigError(f"netG.fusion.inject_stages {list(stages)} span stages of widths {dims}: choose stages "
                          "of one width")
    if middle_out != dims[0]:
        raise ConfigError(f"netG.fusion.middle.out_chans={middle_out} must equal the width {dims[0]} of the "
                          f"injected stages {list(stages)}")
    return tuple(stages), dims[0]


def _fusion_fields(net: Mapping[str, Any], in_chans: int, spike_repr: str) -> dict[str, Any]:
    fusion = _section(net, "fusion")
    early, middle = _section(fusion, "early"), _section(fusion, "middle")
    placement = _choice(fusion.get("placement", "early"), PLACEMENTS, "netG.fusion.placement")
    operator = _choice(fusion.get("operator", "concat"), OPERATORS, "netG.fusion.operator")
    mode = _choice(fusion.get("mode", "replace"), ("replace", "residual"), "netG.fusion.mode")
    out = int(fusion.get("out_chans", 3))
    early_out, middle_out = int(early.get("out_chans", out)), int(middle.get("out_chans", out))
    requested = _choice(early.get("frame_contract", "operator_default"), CONTRACTS, "netG.fusion.early.frame_contract")
    default = "collapsed" if operator in _COLLAPSED_BY_DEFAULT else "expanded"
    contract = default if requested == "operator_default" else requested
    if in_chans <= 3:
        raise ConfigError(f"netG.input.strategy=fusion needs spike channels: in_chans (RGB 3 + spike) is {in_chans}")
    if early.get("expand_to_full_t") or placement == "hybrid":
        if placement != "hybrid":
            raise ConfigError("netG.fusion.early.expand_to_full_t is not supported: remove it (or set false)")
        if spike_repr != "tfp":
            raise ConfigError(f"netG.fusion.placement=hybrid needs TFP spike input (DATA.SPIKE_REPR tfp / S-VRT's "
                              f"spike.representation tfp), got {spike_repr!r}")
    if operator in _EARLY_ONLY:
        if placement != "early":
            raise ConfigError(f"netG.fusion.operator={operator} requires netG.fusion.placement=early")
        if early_out != 3:
            raise ConfigError(f"netG.fusion.operator={operator} requires netG.fusion.out_chans=3")
    if operator in _STRUCTURED and contract != "collapsed":
        raise ConfigError(f"netG.fusion.operator={operator} requires netG.fusion.early.frame_contract=collapsed")
    if contract == "collapsed" and operator not in _COLLAPSED_BY_DEFAULT + _STRUCTURED and placement != "middle":
        raise ConfigError(f"netG.fusion.early.frame_contract=collapsed needs an operator that fuses all of a "
                          f"frame's spike channels at once ({', '.join(_COLLAPSING)}), "
                          f"got {operator}: use expanded")
    if operator == "dual_scale_temporal_mamba" and spike_repr not in ("tfp", "raw_window"):
        raise ConfigError(f"netG.fusion.operator=dual_scale_temporal_mamba needs DATA.SPIKE_REPR tfp or raw_window, "
                          f"got {spike_repr!r}")
    if spike_repr == "raw_window" and operator not in _RAW_WINDOW_OPERATORS:
        raise ConfigError(f"raw-window spike input (DATA.SPIKE_REPR raw_window) needs netG.fusion.operator "
                          f"pase_residual or dual_scale_temporal_mamba, got {operator}")
    stages: tuple[int, ...] = ()
    if placement in ("middle", "hybrid"):
        stages, _ = _inject_stages(fusion, list(net["embed_dims"]), middle_out)
    params = fusion.get("operator_params") or {}
    if not isinstance(params, Mapping):
        raise ConfigError(f"netG.fusion.operator_params must be a mapping, got {params!r}")
    return dict(placement=placement, operator=operator, mode=mode, early_out_chans=early_out,
                middle_out_chans=middle_out, requested_contract=requested, contract=contract,
                inject_stages=stages, operator_params=dict(params))


def _flow_fields(net: Mapping[str, Any]) -> dict[str, Any]:
    flow = _section(net, "optical_flow")
    params = flow.get("params") or {}
    return dict(flow_module=_choice(flow.get("module", "spynet"), FLOW_NETS, "netG.optical_flow.module"),
                flow_checkpoint=flow.get("checkpoint"), flow_params=dict(params))


def _dcn_fields(net: Mapping[str, Any]) -> dict[str, Any]:
    dcn = str(net.get("dcn_type") or "DCNv2")
    if dcn not in ("DCNv2", "DCNv4"):
        raise ConfigError(f"netG.dcn_type must be DCNv2 or DCNv4, got {dcn!r}")
    if dcn == "DCNv4":
        kernel_function()  # stop before the run, naming the option, when the package is missing
    return dict(dcn_type=dcn, dcn_apply_softmax=bool(net.get("dcn_apply_softmax", False)))


def parse_net_options(net: Mapping[str, Any], spike_repr: str = "tfp") -> NetOptions:
    """``netG`` of an S-VRT option file -> :class:`NetOptions`; ``spike_repr`` is the data's spike representation
    (DATA.SPIKE_REPR), which some operators require."""
    if not isinstance(net, Mapping):
        raise ConfigError(f"netG must be a mapping (S-VRT's network options), got {type(net).__name__}")
    inputs = _section(net, "input")
    in_chans = int(inputs.get("raw_ingress_chans", net.get("in_chans", 3)))
    strategy_default = "fusion" if _section(net, "fusion").get("enable") else "concat"
    strategy = _choice(inputs.get("strategy", strategy_default), ("concat", "fusion"), "netG.input.strategy")
    input_mode = _choice(inputs.get("mode", net.get("input_mode", "concat")), ("concat", "dual"), "netG.input.mode")
    if strategy == "fusion" and input_mode != "dual":
        raise ConfigError("netG.input.strategy=fusion requires netG.input.mode=dual")
    fields: dict[str, Any] = dict(vrt=_vrt_arguments(net), in_chans=in_chans, strategy=strategy)
    if strategy == "fusion":
        fields.update(_fusion_fields(net, in_chans, spike_repr))
    elif spike_repr == "raw_window":
        raise ConfigError("raw-window spike input needs netG.input.strategy=fusion with operator pase_residual or "
                          "dual_scale_temporal_mamba")
    fields["output_mode"] = _choice(net.get("output_mode", "restoration"), ("restoration", "interpolation"),
                                    "netG.output_mode")
    reducer = dict(_section(net, "restoration_reducer"))
    _choice(reducer.get("type", "index"), REDUCERS, "netG.restoration_reducer.type")
    fields["reducer"] = reducer
    encoder = _section(net, "spike_encoder")
    if encoder.get("enable"):
        _choice(encoder.get("type", "pase"), ("pase",), "netG.spike_encoder.type")
        if strategy == "fusion" and fields["placement"] != "middle":
            raise ConfigError("netG.spike_encoder.enable=true encodes the raw RGB + spike frames: it needs "
                              "netG.input.strategy=concat or middle fusion, not early fusion")
        fields["pase_encoder"] = dict(encoder.get("params") or {})
    fields.update(_flow_fields(net), **_dcn_fields(net))
    return NetOptions(**fields)
