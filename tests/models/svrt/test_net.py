"""S-VRT's network family: S-VRT's state-dict keys at full size, and what each placement and contract computes."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from ds_deblur.ckpt.weights import load_weights
from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.net import SVRTNet
from ds_deblur.models.svrt.options import parse_net_options
from ds_deblur.models.vrt import VRT

REFERENCE = Path(__file__).with_name("svrt_2ac8c0b_keys.json.gz")
PASE = dict(feature_chans=48, hidden_chans=32, kernel_size=3, normalize_kernel=True, alpha_init=0.05,
            gate_bias_init=-2.0, enable_diagnostics=True)
FULL = dict(net_type="vrt", upscale=1, img_size=[6, 96, 96], window_size=[6, 8, 8], depths=[8] * 7 + [4] * 4,
            indep_reconsts=[9, 10], embed_dims=[96] * 7 + [120] * 4, num_heads=[6] * 11, pa_frames=2,
            deformable_groups=16, dcn_type="DCNv2", use_checkpoint_attn=True, use_checkpoint_ffn=True,
            no_checkpoint_attn_blocks=[2, 3, 4], no_checkpoint_ffn_blocks=[1, 2, 3, 4, 5, 9])
TINY = dict(net_type="vrt", upscale=1, img_size=[2, 64, 64], window_size=[2, 8, 8], depths=[1] * 8,
            indep_reconsts=[7], embed_dims=[16] * 8, num_heads=[2] * 8, pa_frames=2, deformable_groups=2)


def fusion(raw: int, operator: str, flow: str = "spynet", contract: str | None = None, **extra) -> dict:
    """A netG of S-VRT's early-fusion family (as its server option files write it)."""
    early = {} if contract is None else {"early": {"frame_contract": contract}}
    params = PASE if operator == "pase_residual" else {}
    return dict(input=dict(strategy="fusion", mode="dual", raw_ingress_chans=raw), in_chans=7,
                fusion=dict(enable=True, placement="early", operator=operator, mode="replace", out_chans=3,
                            operator_params=params, **early),
                output_mode="restoration", restoration_reducer=dict(type="index", index=4),
                optical_flow=dict(module=flow, checkpoint=None, params={}), **extra)


# The option files the reference lists keys for, as netG sections of our own making, and their spike input.
REFERENCE_NETS = {
    "006_train_vrt_videodeblurring_gopro_rgbspike": (dict(in_chans=7, input_mode="concat"), "tfp"),
    "gopro_rgbspike_server_pase_residual": (fusion(7, "pase_residual", "scflow", "collapsed"), "tfp"),
    "gopro_server_gated_snapshot": (fusion(7, "gated", "scflow"), "tfp"),
    "gopro_server_pase_scflow": (fusion(12, "pase_residual", "scflow", "collapsed"), "raw_window"),
    "gopro_server_pase_spynet_snapshot": (fusion(12, "pase_residual", "spynet", "collapsed"), "raw_window"),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_NETS))
def test_state_dict_has_svrt_keys_shapes_and_order_at_full_size(name):
    reference = json.loads(gzip.decompress(REFERENCE.read_bytes()))["keys"][name]
    net, spike_repr = REFERENCE_NETS[name]
    with torch.device("meta"):
        model = SVRTNet(parse_net_options({**FULL, **net}, spike_repr))
    ours = [f"{key} {'x'.join(map(str, value.shape))}" for key, value in model.state_dict().items()]
    assert ours == reference


def tiny(net: dict, spike_repr: str = "tfp", policy: str = "mean_windows", seed: int = 0) -> SVRTNet:
    torch.manual_seed(seed)
    return SVRTNet(parse_net_options({**TINY, **net}, spike_repr), policy).eval()


def inputs(t: int = 2, s: int = 4, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, t, 3, 64, 64, generator=g), torch.rand(1, t, s, 64, 64, generator=g)


def plain_vrt(in_chans: int = 3) -> VRT:
    return VRT(in_chans=in_chans, **{k: v for k, v in TINY.items() if k not in ("net_type", "in_chans")})


def backbone_of(model: SVRTNet, in_chans: int = 3) -> VRT:
    """A plain VRT with the model's backbone weights (its SpyNet is the model's flow net)."""
    vrt = plain_vrt(in_chans)
    vrt.spynet = model.spynet
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("fusion_", "restoration_"))}
    vrt.load_state_dict(state, strict=True)
    return vrt.eval()


def randomise(module: torch.nn.Module, std: float = 0.05) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


@torch.no_grad()
def test_collapsed_early_fusion_restores_the_fused_frames_onto_the_blurry_input():
    model = tiny(fusion(7, "pase_residual", contract="collapsed"))
    randomise(model.fusion_operator)
    blur, spike = inputs()
    fused = model.fusion_operator(blur, spike)
    assert (fused - blur).abs().max() > 1e-3  # the operator does change the frames
    expected = backbone_of(model)(fused) - fused + blur  # VRT's residual on the fused frames, added to the blur
    torch.testing.assert_close(model(blur, spike), expected, rtol=0, atol=1e-5)


@torch.no_grad()
def test_expanded_early_fusion_restores_sub_frames_and_the_reducer_picks_one():
    model = tiny(fusion(7, "gated"))  # a new gated operator passes RGB through: each sub-frame is its frame's RGB
    blur, spike = inputs(s=4)
    sub_frames = blur.repeat_interleave(4, dim=1)
    restored = backbone_of(model)(sub_frames)
    # the reducer's index 4 is clamped to the last of the 4 sub-frames
    torch.testing.assert_close(model(blur, spike), restored.view(1, 2, 4, 3, 64, 64)[:, :, 3], rtol=0, atol=1e-5)


@torch.no_grad()
def test_interpolation_output_keeps_every_sub_frame():
    model = tiny({**fusion(7, "gated"), "output_mode": "interpolation"})
    blur, spike = inputs(s=4)
    sub_frames = blur.repeat_interleave(4, dim=1)
    torch.testing.assert_close(model(blur, spike), backbone_of(model)(sub_frames), rtol=0, atol=1e-5)


def middle(stages: list[int], mode: str) -> dict:
    return dict(input=dict(strategy="fusion", mode="dual", raw_ingress_chans=5),
                fusion=dict(placement="middle", operator="concat", mode=mode, inject_stages=stages,
                            middle=dict(out_chans=16)))


@torch.no_grad()
@pytest.mark.parametrize("stage", [1, 7])
def test_middle_fusion_rewrites_the_injected_stage_output(stage):
    blur, spike = inputs(s=2)
    residual = tiny(middle([stage], "residual"))
    torch.nn.init.zeros_(residual.fusion_operator.proj.weight)
    torch.nn.init.zeros_(residual.fusion_operator.proj.bias)
    vrt = backbone_of(residual, in_chans=5)
    plain = vrt.residual(torch.cat([blur, spike], 2), vrt.get_flows(blur))
    # a residual fusion that adds zero leaves VRT as it is (the residual goes onto the blurry RGB)
    torch.testing.assert_close(residual(blur, spike), plain + blur, rtol=0, atol=1e-5)
    seen = []
    residual.fusion_adapter.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    replaced = tiny(middle([stage], "replace"))
    replaced.load_state_dict(residual.state_dict())
    assert (replaced(blur, spike) - residual(blur, spike)).abs().max() > 1e-4  # replace by zero: not a no-op
    assert seen == list(range(1, 8))  # asked after every stage, fusing only at the injected one


@torch.no_grad()
def test_hybrid_fusion_runs_on_sub_frames():
    net = dict(input=dict(strategy="fusion", mode="dual", raw_ingress_chans=5),
               fusion=dict(placement="hybrid", operator="gated", inject_stages=[1], middle=dict(out_chans=16)),
               restoration_reducer=dict(type="selector"))
    model = tiny(net)
    blur, spike = inputs(s=2)
    out = model(blur, spike)
    assert out.shape == blur.shape and torch.isfinite(out).all()
    assert set(dict(model.named_children())) >= {"fusion_operator", "fusion_adapter", "restoration_reducer"}
    assert model.fusion_adapter.early_adapter.operator is model.fusion_operator


@torch.no_grad()
def test_concat_strategy_is_vrt_on_rgb_and_spike_channels_with_rgb_flow():
    model = tiny(dict(in_chans=7, input_mode="concat"))
    blur, spike = inputs(s=4)
    x = torch.cat([blur, spike], 2)
    vrt = backbone_of(model, in_chans=7)
    expected = blur + vrt.residual(x, vrt.get_flows(blur))
    torch.testing.assert_close(model(blur, spike), expected, rtol=0, atol=1e-6)


@torch.no_grad()
def test_scflow_flow_from_spike_windows_mean_and_composed():
    blur, spike = inputs(s=4)
    flow_spike = torch.rand(1, 2 * 4, 25, 64, 64, generator=torch.Generator().manual_seed(5)).round()
    mean = tiny(fusion(7, "pase_residual", "scflow", "collapsed"))
    per_frame = flow_spike.view(1, 2, 4, 25, 64, 64).mean(dim=2)
    torch.testing.assert_close(mean(blur, spike, flow_spike), mean(blur, spike, per_frame), rtol=0, atol=0)
    composed = tiny(fusion(7, "pase_residual", "scflow", "collapsed"), policy="compose_subframes")
    composed.load_state_dict(mean.state_dict())
    assert (composed(blur, spike, flow_spike) - mean(blur, spike, flow_spike)).abs().max() > 0
    with pytest.raises(ValueError, match="flow_spike"):
        mean(blur, spike)


def test_options_errors_name_the_option():
    with pytest.raises(ConfigError, match="netG.dcn_type=DCNv4 needs the DCNv4 package.*netG.dcn_type=DCNv2"):
        parse_net_options({**TINY, "dcn_type": "DCNv4"})
    with pytest.raises(ConfigError, match="netG.fusion.operator"):
        parse_net_options({**TINY, **fusion(7, "mystery")})
    with pytest.raises(ConfigError, match="frame_contract=collapsed"):
        parse_net_options({**TINY, **fusion(7, "pase_residual", contract="expanded")})
    with pytest.raises(ConfigError, match="raw_window"):
        parse_net_options({**TINY, **fusion(7, "gated")}, "raw_window")
    with pytest.raises(ConfigError, match="netG.window_size"):
        parse_net_options({k: v for k, v in TINY.items() if k != "window_size"})


def test_svrt_weight_files_load_strictly(tmp_path):
    source = tiny(fusion(7, "gated", "scflow"), seed=1)
    randomise(source)
    for name in ("1000_G.pth", "1000_E.pth"):  # S-VRT's flat state dicts, keys unprefixed
        torch.save(source.state_dict(), tmp_path / name)
        target = tiny(fusion(7, "gated", "scflow"), seed=2)
        load_weights(target, tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    broken = dict(source.state_dict())
    broken.pop("fusion_adapter.operator.gate.0.bias")
    torch.save(broken, tmp_path / "bad_G.pth")
    with pytest.raises(Exception, match="fusion_adapter.operator.gate.0.bias"):
        load_weights(tiny(fusion(7, "gated", "scflow")), tmp_path / "bad_G.pth")


def test_official_vrt_release_initialises_the_backbone_only(tmp_path):
    model = tiny(fusion(7, "gated"), seed=1)
    fusion_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("fusion_")}
    release = plain_vrt().state_dict()  # official names: spynet.*, no fusion
    assert "spynet.basic_module.0.basic_module.0.weight" in release
    torch.save({"params": release}, tmp_path / "006_VRT_videodeblurring_GoPro.pth")
    load_weights(model, tmp_path / "006_VRT_videodeblurring_GoPro.pth")
    state = model.state_dict()
    assert torch.equal(state["spynet.model.basic_module.0.basic_module.0.weight"],
                       release["spynet.basic_module.0.basic_module.0.weight"])
    assert torch.equal(state["stage1.linear1.weight"], release["stage1.linear1.weight"])
    assert all(torch.equal(state[k], v) for k, v in fusion_before.items())
    concat = tiny(dict(in_chans=7, input_mode="concat"))  # conv_first takes 7 x 9 channels, the release 3 x 9
    with pytest.raises(Exception, match="conv_first.weight"):
        load_weights(concat, tmp_path / "006_VRT_videodeblurring_GoPro.pth")
