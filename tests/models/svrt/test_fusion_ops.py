"""S-VRT's fusion operators and PASE encoder: parameter names in S-VRT's order, forwards against functional
re-statements of S-VRT's formulas that use the module's parameters, and the checks of ``operator_params``."""
import math

import pytest
import torch
import torch.nn.functional as F

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.fusion import attention as attention_module
from ds_deblur.models.svrt.fusion.attention import AttentionFusion
from ds_deblur.models.svrt.fusion.concat import ConcatFusion
from ds_deblur.models.svrt.fusion.gated import GatedFusion
from ds_deblur.models.svrt.fusion.pase import PaseFusion
from ds_deblur.models.svrt.fusion.pase_residual import PaseResidualFusion
from ds_deblur.models.svrt.pase_encoder import PixelAdaptiveSpikeEncoder

B, T, S, H, W = 1, 2, 3, 16, 16


def _randomized(module):
    """Non-trivial values everywhere, so zero-initialised heads and near-zero gates hide nothing."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
    return module.eval()


def _layout(module):
    return [(name, tuple(t.shape)) for name, t in module.state_dict().items()]


def _expanded_inputs(rgb_chans=3, spike_chans=1):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, T * S, rgb_chans, H, W, generator=g), torch.rand(B, T * S, spike_chans, H, W, generator=g)


def _collapsed_inputs(bins=S):
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, T, 3, H, W, generator=g), torch.rand(B, T, bins, H, W, generator=g)


def _assert_close(out, ref):
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= 1e-5


def _conv(x, p, prefix, **kw):
    return F.conv2d(x, p[prefix + ".weight"], p[prefix + ".bias"], **kw)


def _per_frame(fn, rgb, spike):
    return fn(rgb.flatten(0, 1), spike.flatten(0, 1)).unflatten(0, rgb.shape[:2])


# ---- PASE encoder ----

PASE_LAYOUT = [  # in 2, out 3, kernel 3, hidden 4
    ("kernel_predictor.net.0.weight", (4, 2, 3, 3)), ("kernel_predictor.net.0.bias", (4,)),
    ("kernel_predictor.net.2.weight", (4, 4, 3, 3)), ("kernel_predictor.net.2.bias", (4,)),
    ("kernel_predictor.net.4.weight", (54, 4, 3, 3)), ("kernel_predictor.net.4.bias", (54,)),
]


def pase_reference(spike, p, out_chans, k, normalize=True):
    """Per pixel: softmax-normalised predicted kernels (c, l, ky, kx) dotted with the zero-padded patch."""
    b, l, h, w = spike.shape
    x = F.relu(_conv(spike, p, "kernel_predictor.net.0", padding=1))
    x = F.relu(_conv(x, p, "kernel_predictor.net.2", padding=1))
    logits = _conv(x, p, "kernel_predictor.net.4", padding=1).reshape(b, out_chans, l * k * k, h, w)
    kernel = logits.softmax(dim=2) if normalize else logits
    padded = F.pad(spike, [k // 2] * 4)
    patch = torch.stack([padded[:, :, dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)], dim=2)
    return (kernel * patch.reshape(b, 1, l * k * k, h, w)).sum(dim=2)


def test_pase_encoder_layout():
    assert _layout(PixelAdaptiveSpikeEncoder(2, 3, kernel_size=3, hidden_chans=4)) == PASE_LAYOUT


@pytest.mark.parametrize("k,normalize", [(3, True), (5, False)])
def test_pase_encoder_forward(k, normalize):
    enc = _randomized(PixelAdaptiveSpikeEncoder(2, 3, kernel_size=k, hidden_chans=4, normalize_kernel=normalize))
    spike = torch.rand(2, 2, H, W)
    with torch.no_grad():
        _assert_close(enc(spike), pase_reference(spike, enc.state_dict(), 3, k, normalize))


# ---- concat ----

def test_concat_layout_and_forward():
    op = _randomized(ConcatFusion(3, 1, 4, {}))
    assert _layout(op) == [("proj.weight", (4, 4, 1, 1)), ("proj.bias", (4,))]
    assert (op.frame_contract, op.rgb_chans, op.spike_chans, op.out_chans) == ("expanded", 3, 1, 4)
    p = op.state_dict()
    rgb, spike = _expanded_inputs()
    with torch.no_grad():
        _assert_close(op(rgb, spike), _per_frame(lambda r, s: _conv(torch.cat([r, s], 1), p, "proj"), rgb, spike))
        _assert_close(op(rgb[0], spike[0]), op(rgb, spike)[0])  # 4-D inputs


# ---- gated ----

GATED_LAYOUT = [  # rgb 3, spike 1, out 3, hidden 32
    ("correction.0.weight", (32, 4, 3, 3)), ("correction.0.bias", (32,)),
    ("correction.2.weight", (3, 32, 1, 1)), ("correction.2.bias", (3,)),
    ("gate.0.weight", (32, 4, 3, 3)), ("gate.0.bias", (32,)),
    ("gate.2.weight", (3, 32, 1, 1)), ("gate.2.bias", (3,)),
]


def test_gated_layout_and_init():
    op = GatedFusion(3, 1, 3, {})
    assert _layout(op) == GATED_LAYOUT
    assert op.correction[2].weight.abs().sum() == 0 and (op.gate[2].bias == -5).all()
    rgb, spike = _expanded_inputs()
    with torch.no_grad():
        assert torch.equal(op(rgb, spike), rgb)  # a new operator passes RGB through


def test_gated_forward():
    op = _randomized(GatedFusion(3, 1, 3, {"hidden_chans": 8}))
    p = op.state_dict()

    def reference(rgb, spike):
        x = torch.cat([rgb, spike], 1)
        correction = _conv(F.relu(_conv(x, p, "correction.0", padding=1)), p, "correction.2")
        gate = torch.sigmoid(_conv(F.relu(_conv(x, p, "gate.0", padding=1)), p, "gate.2"))
        return rgb + gate * correction

    rgb, spike = _expanded_inputs()
    with torch.no_grad():
        _assert_close(op(rgb, spike), _per_frame(reference, rgb, spike))


# ---- pase ----

def test_pase_fusion_layout_and_forward():
    op = _randomized(PaseFusion(3, 1, 4, {"hidden_chans": 4}))
    assert _layout(op) == [
        ("pase.kernel_predictor.net.0.weight", (4, 1, 3, 3)), ("pase.kernel_predictor.net.0.bias", (4,)),
        ("pase.kernel_predictor.net.2.weight", (4, 4, 3, 3)), ("pase.kernel_predictor.net.2.bias", (4,)),
        ("pase.kernel_predictor.net.4.weight", (36, 4, 3, 3)), ("pase.kernel_predictor.net.4.bias", (36,)),
        ("rgb_proj.weight", (4, 3, 1, 1)), ("rgb_proj.bias", (4,)),
    ]
    p = op.state_dict()
    encoder = {k[len("pase."):]: v for k, v in p.items() if k.startswith("pase.")}
    rgb, spike = _expanded_inputs()
    with torch.no_grad():
        ref = _per_frame(lambda r, s: _conv(r, p, "rgb_proj") + pase_reference(s, encoder, 4, 3), rgb, spike)
        _assert_close(op(rgb, spike), ref)


# ---- attention ----

def _block(seq, p, prefix, heads):
    """Pre-norm transformer block: multi-head softmax attention, then a GELU MLP."""
    n, length, dim = seq.shape
    x = F.layer_norm(seq, (dim,), p[prefix + "norm1.weight"], p[prefix + "norm1.bias"])
    q, k, v = F.linear(x, p[prefix + "attn.in_proj_weight"], p[prefix + "attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (y.reshape(n, length, heads, dim // heads).transpose(1, 2) for y in (q, k, v))
    weights = (q @ k.transpose(-1, -2) / math.sqrt(dim // heads)).softmax(dim=-1)
    attended = (weights @ v).transpose(1, 2).reshape(n, length, dim)
    seq = seq + F.linear(attended, p[prefix + "attn.out_proj.weight"], p[prefix + "attn.out_proj.bias"])
    x = F.layer_norm(seq, (dim,), p[prefix + "norm2.weight"], p[prefix + "norm2.bias"])
    x = F.gelu(F.linear(x, p[prefix + "mlp.0.weight"], p[prefix + "mlp.0.bias"]))
    return seq + F.linear(x, p[prefix + "mlp.3.weight"], p[prefix + "mlp.3.bias"])


def attention_reference(rgb, spike, p, layers, heads, stride):
    b, t, s, h, w = spike.shape
    r = F.relu(_conv(rgb.reshape(b * t, 3, h, w), p, "rgb_context_encoder.0", stride=stride, padding=1))
    r = F.relu(_conv(r, p, "rgb_context_encoder.2", padding=1))
    x = F.relu(_conv(spike.reshape(b * t * s, 1, h, w), p, "spike_token_encoder.0", stride=stride, padding=1))
    x = _conv(x, p, "spike_token_encoder.2", padding=1)
    dim, gh, gw = r.shape[1:]
    # tokens: (frame, grid y, grid x) sequences over the spike bins
    seq = x.reshape(b * t, s, dim, gh * gw).permute(0, 3, 1, 2) + r.reshape(b * t, dim, gh * gw, 1).permute(0, 2, 3, 1)
    seq = seq.reshape(-1, s, dim)
    for i in range(layers):
        seq = _block(seq, p, f"attention_token_mixer.{i}.", heads)
    low = seq.mean(dim=1).reshape(b * t, gh * gw, dim).permute(0, 2, 1).reshape(b * t, dim, gh, gw) + r
    body = F.relu(_conv(low, p, "fusion_writeback_head.body.0", padding=1))
    up = [F.interpolate(_conv(body, p, f"fusion_writeback_head.{n}"), size=(h, w), mode="bilinear",
                        align_corners=False).reshape(b, t, 3, h, w) for n in ("delta", "gate")]
    return rgb + p["alpha"].reshape(1, 1, 3, 1, 1) * torch.sigmoid(up[1]) * up[0]


ATTENTION_LAYOUT = [  # token_dim 8, 1 layer, mlp_ratio 2
    ("alpha", (1, 3, 1, 1)),
    ("rgb_context_encoder.0.weight", (8, 3, 3, 3)), ("rgb_context_encoder.0.bias", (8,)),
    ("rgb_context_encoder.2.weight", (8, 8, 3, 3)), ("rgb_context_encoder.2.bias", (8,)),
    ("spike_token_encoder.0.weight", (8, 1, 3, 3)), ("spike_token_encoder.0.bias", (8,)),
    ("spike_token_encoder.2.weight", (8, 8, 3, 3)), ("spike_token_encoder.2.bias", (8,)),
    ("attention_token_mixer.0.norm1.weight", (8,)), ("attention_token_mixer.0.norm1.bias", (8,)),
    ("attention_token_mixer.0.attn.in_proj_weight", (24, 8)), ("attention_token_mixer.0.attn.in_proj_bias", (24,)),
    ("attention_token_mixer.0.attn.out_proj.weight", (8, 8)), ("attention_token_mixer.0.attn.out_proj.bias", (8,)),
    ("attention_token_mixer.0.norm2.weight", (8,)), ("attention_token_mixer.0.norm2.bias", (8,)),
    ("attention_token_mixer.0.mlp.0.weight", (16, 8)), ("attention_token_mixer.0.mlp.0.bias", (16,)),
    ("attention_token_mixer.0.mlp.3.weight", (8, 16)), ("attention_token_mixer.0.mlp.3.bias", (8,)),
    ("fusion_writeback_head.body.0.weight", (8, 8, 3, 3)), ("fusion_writeback_head.body.0.bias", (8,)),
    ("fusion_writeback_head.delta.weight", (3, 8, 1, 1)), ("fusion_writeback_head.delta.bias", (3,)),
    ("fusion_writeback_head.gate.weight", (3, 8, 1, 1)), ("fusion_writeback_head.gate.bias", (3,)),
]


def test_attention_layout_and_init():
    op = AttentionFusion(3, 1, 3, {"token_dim": 8, "num_heads": 2, "num_layers": 1})
    assert _layout(op) == ATTENTION_LAYOUT
    assert (op.frame_contract, op.expects_structured_early) == ("collapsed", True)
    assert torch.allclose(op.alpha, torch.tensor(0.05)) and (op.fusion_writeback_head["gate"].bias == -2).all()
    assert op.fusion_writeback_head["delta"].bias.abs().sum() == 0


def test_attention_forward():
    op = _randomized(AttentionFusion(3, 1, 3, {"model_dim": 8, "num_heads": 2, "num_layers": 2}))
    rgb, spike = _collapsed_inputs()
    with torch.no_grad():
        _assert_close(op(rgb, spike), attention_reference(rgb, spike, op.state_dict(), layers=2, heads=2, stride=4))
        _assert_close(op(rgb, spike[:, :, :2]), attention_reference(rgb, spike[:, :, :2], op.state_dict(), 2, 2, 4))


def test_attention_chunks_token_sequences(monkeypatch):
    op = _randomized(AttentionFusion(3, 1, 3, {"token_dim": 8, "num_heads": 2, "num_layers": 1}))
    rgb, spike = _collapsed_inputs()
    with torch.no_grad():
        whole = op(rgb, spike)
        monkeypatch.setattr(attention_module, "_MAX_SEQUENCES", 5)
        _assert_close(op(rgb, spike), whole)


# ---- pase_residual ----

PASE_RESIDUAL_LAYOUT = [  # spike bins 3, feature_chans 6, hidden_chans 4
    ("alpha", (1, 3, 1, 1)),
    ("rgb_context_encoder.0.weight", (6, 3, 3, 3)), ("rgb_context_encoder.0.bias", (6,)),
    ("rgb_context_encoder.2.weight", (6, 6, 3, 3)), ("rgb_context_encoder.2.bias", (6,)),
    ("pase.kernel_predictor.net.0.weight", (4, 3, 3, 3)), ("pase.kernel_predictor.net.0.bias", (4,)),
    ("pase.kernel_predictor.net.2.weight", (4, 4, 3, 3)), ("pase.kernel_predictor.net.2.bias", (4,)),
    ("pase.kernel_predictor.net.4.weight", (162, 4, 3, 3)), ("pase.kernel_predictor.net.4.bias", (162,)),
    ("fusion_body.0.weight", (6, 6, 3, 3)), ("fusion_body.0.bias", (6,)),
    ("fusion_body.2.weight", (6, 6, 3, 3)), ("fusion_body.2.bias", (6,)),
    ("fusion_writeback_head.delta.weight", (3, 6, 1, 1)), ("fusion_writeback_head.delta.bias", (3,)),
    ("fusion_writeback_head.gate.weight", (3, 6, 1, 1)), ("fusion_writeback_head.gate.bias", (3,)),
]


def test_pase_residual_layout():
    op = PaseResidualFusion(3, S, 3, {"feature_chans": 6, "hidden_chans": 4})
    assert _layout(op) == PASE_RESIDUAL_LAYOUT
    assert (op.frame_contract, op.expects_structured_early, op.spike_chans) == ("collapsed", True, S)
    # as in S-VRT, hidden_chans also sizes the features when feature_chans is absent
    assert PaseResidualFusion(3, S, 3, {"hidden_chans": 5}).fusion_body[0].weight.shape[0] == 5


def test_pase_residual_forward():
    op = _randomized(PaseResidualFusion(3, S, 3, {"feature_chans": 6, "hidden_chans": 4}))
    p = op.state_dict()
    encoder = {k[len("pase."):]: v for k, v in p.items() if k.startswith("pase.")}
    rgb, spike = _collapsed_inputs()
    b, t, s, h, w = spike.shape
    x = F.relu(_conv(rgb.reshape(b * t, 3, h, w), p, "rgb_context_encoder.0", padding=1))
    x = F.relu(_conv(x, p, "rgb_context_encoder.2", padding=1)) + pase_reference(spike.reshape(b * t, s, h, w),
                                                                                 encoder, 6, 3)
    x = F.relu(_conv(F.relu(_conv(x, p, "fusion_body.0", padding=1)), p, "fusion_body.2", padding=1))
    delta, gate = (_conv(x, p, f"fusion_writeback_head.{n}").reshape(b, t, 3, h, w) for n in ("delta", "gate"))
    ref = rgb + p["alpha"].reshape(1, 1, 3, 1, 1) * torch.sigmoid(gate) * delta
    with torch.no_grad():
        _assert_close(op(rgb, spike), ref)


# ---- diagnostics and warmup (logging and S-VRT's two-phase training) ----

@pytest.mark.parametrize("cls,params,names", [
    (AttentionFusion, {"token_dim": 8, "num_heads": 2, "num_layers": 1}, ["token_norm", "attention_norm"]),
    (PaseResidualFusion, {"feature_chans": 6, "hidden_chans": 4}, ["pase_norm", "body_norm"]),
])
def test_diagnostics_and_warmup(cls, params, names):
    spike_chans = 1 if cls is AttentionFusion else S
    rgb, spike = _collapsed_inputs()
    quiet = cls(3, spike_chans, 3, params)
    with torch.no_grad():
        quiet(rgb, spike)
    assert quiet.diagnostics() == {"warmup_stage": "full"}
    op = cls(3, spike_chans, 3, {**params, "enable_diagnostics": True})
    op.set_warmup_stage("writeback_only")
    with torch.no_grad():
        op(rgb, spike)
    stats = op.diagnostics()
    assert list(stats) == names + ["delta_norm", "gate_mean", "effective_update_norm", "warmup_stage"]
    assert stats["warmup_stage"] == "writeback_only"
    trained = {n.split(".")[0] for n, p in op.named_parameters() if p.requires_grad}
    assert trained == {"alpha", "fusion_writeback_head"}
    op.set_warmup_stage(None)
    assert all(p.requires_grad for p in op.parameters())
    with pytest.raises(ValueError, match="warmup stage"):
        op.set_warmup_stage("later")


# ---- bad options ----

@pytest.mark.parametrize("cls,args,params,match", [
    (ConcatFusion, (3, 1, 3), {"hidden_chans": 8}, r"operator_params\.hidden_chans is not an option .* none"),
    (GatedFusion, (3, 1, 3), {"hiden_chans": 8}, r"operator_params\.hiden_chans .* known options: hidden_chans"),
    (GatedFusion, (3, 1, 3), {"hidden_chans": -1}, r"operator_params\.hidden_chans must be a positive integer"),
    (GatedFusion, (3, 1, 3), {"hidden_chans": "32"}, r"operator_params\.hidden_chans must be a positive integer"),
    (GatedFusion, (3, 1, 4), {}, r"out_chans must equal"),
    (PaseFusion, (3, 1, 3), {"kernel_size": 4}, r"operator_params\.kernel_size must be odd"),
    (PaseFusion, (3, 1, 3), {"normalize_kernel": "false"}, r"operator_params\.normalize_kernel must be true or false"),
    (PaseFusion, (3, 1, 3), {"alpha_init": 0.1}, r"operator_params\.alpha_init is not an option"),
    (AttentionFusion, (3, 1, 3), {"num_heads": 5}, r"operator_params\.num_heads \(5\) must divide token_dim"),
    (AttentionFusion, (3, 1, 3), {"model_dim": 0}, r"operator_params\.model_dim must be a positive integer"),
    (AttentionFusion, (3, 1, 3), {"num_layers": -1}, r"operator_params\.num_layers must be an integer >= 0"),
    (AttentionFusion, (3, 1, 3), {"attn_drop": 1.0}, r"operator_params\.attn_drop must be a number in \[0, 1\)"),
    (AttentionFusion, (3, 1, 3), {"mlp_ratio": 0}, r"operator_params\.mlp_ratio must be a number that is finite"),
    (AttentionFusion, (3, 1, 3), {"init_gate_bias": "low"}, r"operator_params\.init_gate_bias must be a number"),
    (AttentionFusion, (3, 1, 3), {"d_state": 16}, r"operator_params\.d_state .* known options: alpha_init"),
    (AttentionFusion, (3, 2, 3), {}, r"spike_chans=1"),
    (PaseResidualFusion, (3, 2, 3), {"feature_chans": 1.5}, r"operator_params\.feature_chans must be"),
    (PaseResidualFusion, (3, 2, 3), {"alpha_init": float("nan")}, r"operator_params\.alpha_init must be a number"),
    (PaseResidualFusion, (3, 2, 3), {"enable_diagnostics": 1}, r"operator_params\.enable_diagnostics must be"),
    (PaseResidualFusion, (3, 2, 3), {"token_dim": 8}, r"operator_params\.token_dim .* known options: alpha_init"),
    (PaseResidualFusion, (4, 2, 3), {}, r"rgb_chans=3"),
])
def test_bad_options_raise_config_error(cls, args, params, match):
    with pytest.raises(ConfigError, match=match):
        cls(*args, params)


def test_option_aliases():
    assert AttentionFusion(3, 1, 3, {"model_dim": 8, "num_heads": 2}).alpha.shape == (1, 3, 1, 1)
    op = AttentionFusion(3, 1, 3, {"token_dim": 8, "model_dim": 16, "num_heads": 2, "init_gate_bias": -1.0})
    assert op.rgb_context_encoder[0].out_channels == 8  # the canonical name wins, as in S-VRT
    assert (op.fusion_writeback_head["gate"].bias == -1).all()
