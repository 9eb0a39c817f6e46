"""Our Mamba layer and S-VRT's two Mamba fusion operators, checked against their definitions written out here.

The scan and the layer are compared with the recurrence computed step by step in float64; the state-dict layouts
are the ones of S-VRT's operators built with mamba_ssm installed, listed by hand; everything runs on CPU without
mamba_ssm.
"""
from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt import selective_scan as scan_module
from ds_deblur.models.svrt.fusion.dual_scale_temporal_mamba import DualScaleTemporalMambaFusion
from ds_deblur.models.svrt.fusion.mamba import MambaFusion
from ds_deblur.models.svrt.selective_scan import Mamba, selective_scan

MAMBA_PARAMS = dict(token_dim=4, token_stride=2, d_state=3, d_conv=3, expand=2, num_layers=2)
DUAL_PARAMS = dict(token_dim=4, patch_stride=2, d_state=3, d_conv=2, expand=1, local_layers=1, global_layers=2)


# ----- the definitions, written out --------------------------------------------------------------------------------

def recurrence(u, delta, A, B, C, D=None, z=None, delta_bias=None, softplus=True):
    """The selective scan one time step at a time, in float64: u, delta, z (b, d, l), A (d, n), B, C (b, n, l)."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if softplus:
        delta = torch.log1p(torch.exp(delta))
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(u.shape[2]):
        dt = delta[:, :, t, None]
        h = torch.exp(dt * A) * h + dt * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * z.double() * torch.sigmoid(z.double())
    return y


def mamba_reference(p, x):
    """Mamba on x (b, l, d_model) from its parameters ``p`` (state-dict names), in float64."""
    p = {k: v.double() for k, v in p.items()}
    x = x.double()
    length, d_inner, d_state = x.shape[1], p["D"].shape[0], p["A_log"].shape[1]
    rank = p["dt_proj.weight"].shape[1]
    xz = x @ p["in_proj.weight"].T
    xs, z = xz[..., :d_inner], xz[..., d_inner:]
    # Causal depthwise convolution: output t sees inputs t - K + 1 .. t.
    w = p["conv1d.weight"][:, 0]
    k = w.shape[1]
    conv = torch.zeros_like(xs) + p["conv1d.bias"]
    for t in range(length):
        for j in range(k):
            if t - (k - 1) + j >= 0:
                conv[:, t] += w[:, j] * xs[:, t - (k - 1) + j]
    xs = conv * torch.sigmoid(conv)
    dbl = xs @ p["x_proj.weight"].T
    dt, B, C = dbl[..., :rank], dbl[..., rank:rank + d_state], dbl[..., rank + d_state:]
    delta = dt @ p["dt_proj.weight"].T + p["dt_proj.bias"]
    y = recurrence(xs.transpose(1, 2), delta.transpose(1, 2), -torch.exp(p["A_log"]), B.transpose(1, 2),
                   C.transpose(1, 2), p["D"], z.transpose(1, 2))
    return y.transpose(1, 2) @ p["out_proj.weight"].T


def sub(p, prefix):
    return {k[len(prefix):]: v for k, v in p.items() if k.startswith(prefix)}


def residual_block(p, prefix, x):
    """x + Mamba(LayerNorm(x)) on (b, l, c)."""
    normed = F.layer_norm(x, x.shape[-1:], p[prefix + "norm.weight"].double(), p[prefix + "norm.bias"].double())
    return x + mamba_reference(sub(p, prefix + "mamba."), normed)


def conv(p, prefix, x, stride=1, relu=True):
    y = F.conv2d(x, p[prefix + ".weight"].double(), p[prefix + ".bias"].double(), stride=stride,
                 padding=p[prefix + ".weight"].shape[-1] // 2)
    return torch.relu(y) if relu else y


def upsample(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def writeback(p, rgb, fused, delta_key, gate_key):
    """rgb + alpha * sigmoid(gate(fused)) * delta(fused), the heads at full resolution per frame."""
    b, n, _, h, w = rgb.shape
    delta = upsample(conv(p, delta_key, fused, relu=False), (h, w)).reshape(b, n, 3, h, w)
    gate = upsample(conv(p, gate_key, fused, relu=False), (h, w)).reshape(b, n, 3, h, w)
    return rgb.double() + p["alpha"].double().view(1, 1, 3, 1, 1) * torch.sigmoid(gate) * delta


def mamba_fusion_reference(p, rgb, spike, stride, layers):
    b, n, _, h, w = rgb.shape
    s = spike.shape[2]
    frames = rgb.double().reshape(b * n, 3, h, w)
    rgb_low = conv(p, "rgb_context_encoder.2", conv(p, "rgb_context_encoder.0", frames, stride))
    bins = spike.double().reshape(b * n * s, 1, h, w)
    spike_low = conv(p, "spike_token_encoder.2", conv(p, "spike_token_encoder.0", bins, stride), relu=False)
    dim, lh, lw = rgb_low.shape[1:]
    rgb_low, spike_low = rgb_low.reshape(b, n, dim, lh, lw), spike_low.reshape(b, n, s, dim, lh, lw)
    fused = torch.zeros(b, n, dim, lh, lw, dtype=torch.float64)
    for bi in range(b):
        for t in range(n):
            for i in range(lh):
                for j in range(lw):
                    seq = (spike_low[bi, t, :, :, i, j] + rgb_low[bi, t, :, i, j])[None]
                    for layer in range(layers):
                        seq = residual_block(p, f"mamba_token_mixer.{layer}.", seq)
                    fused[bi, t, :, i, j] = seq[0].mean(0) + rgb_low[bi, t, :, i, j]
    body = conv(p, "fusion_writeback_head.body.0", fused.reshape(b * n, dim, lh, lw))
    return writeback(p, rgb, body, "fusion_writeback_head.delta", "fusion_writeback_head.gate")


def stage(p, prefix, depth, seq):
    for block in range(depth):
        seq = residual_block(p, f"{prefix}blocks.{block}.", seq)
    normed = F.layer_norm(seq, seq.shape[-1:], p[prefix + "ffn_norm.weight"].double(),
                          p[prefix + "ffn_norm.bias"].double())
    hidden = F.gelu(F.linear(normed, p[prefix + "ffn.0.weight"].double(), p[prefix + "ffn.0.bias"].double()))
    return seq + F.linear(hidden, p[prefix + "ffn.2.weight"].double(), p[prefix + "ffn.2.bias"].double())


def dual_fusion_reference(p, rgb, spike, stride, local_layers, global_layers):
    b, n, _, h, w = rgb.shape
    s = spike.shape[2]
    bins = spike.double().reshape(b * n * s, 1, h, w)
    spike_low = conv(p, "spike_projector.2", conv(p, "spike_projector.0", bins, stride), relu=False)
    dim, lh, lw = spike_low.shape[1:]
    spike_low = spike_low.reshape(b, n, s, dim, lh, lw)
    context = torch.zeros(b, n, dim, lh, lw, dtype=torch.float64)
    for bi in range(b):
        for i in range(lh):
            for j in range(lw):
                summaries = []
                for t in range(n):
                    local = stage(p, "local_stage.", local_layers, spike_low[bi, t, :, :, i, j][None])[0]
                    logits = local @ p["summary_gate.weight"].double()[0] + p["summary_gate.bias"].double()
                    summaries.append((torch.softmax(logits, dim=0)[:, None] * local).sum(0))
                context[bi, :, :, i, j] = stage(p, "global_stage.", global_layers, torch.stack(summaries)[None])[0]
    context = upsample(context.reshape(b * n, dim, lh, lw), (h, w))
    frames = rgb.double().reshape(b * n, 3, h, w)
    rgb_ctx = conv(p, "rgb_context_encoder.2", conv(p, "rgb_context_encoder.0", frames))
    fused = conv(p, "fusion_body.2", conv(p, "fusion_body.0", rgb_ctx + context))
    return writeback(p, rgb, fused, "delta_head", "gate_head")


# ----- layouts, written out ----------------------------------------------------------------------------------------

def mamba_layout(prefix, d_model, d_state, d_conv, expand):
    """mamba_ssm.Mamba's state dict: its own A_log and D first, then its submodules in the order they are built."""
    d_inner, rank = expand * d_model, math.ceil(d_model / 16)
    return [(prefix + "A_log", (d_inner, d_state)), (prefix + "D", (d_inner,)),
            (prefix + "in_proj.weight", (2 * d_inner, d_model)),
            (prefix + "conv1d.weight", (d_inner, 1, d_conv)), (prefix + "conv1d.bias", (d_inner,)),
            (prefix + "x_proj.weight", (rank + 2 * d_state, d_inner)),
            (prefix + "dt_proj.weight", (d_inner, rank)), (prefix + "dt_proj.bias", (d_inner,)),
            (prefix + "out_proj.weight", (d_model, d_inner))]


def block_layout(prefix, dim, d_state, d_conv, expand):
    return ([(prefix + "norm.weight", (dim,)), (prefix + "norm.bias", (dim,))]
            + mamba_layout(prefix + "mamba.", dim, d_state, d_conv, expand))


def conv_layout(prefix, out_chans, in_chans, k):
    return [(prefix + ".weight", (out_chans, in_chans, k, k)), (prefix + ".bias", (out_chans,))]


def stage_layout(prefix, depth, dim, d_state, d_conv, expand):
    blocks = [entry for i in range(depth) for entry in block_layout(f"{prefix}blocks.{i}.", dim, d_state, d_conv,
                                                                     expand)]
    return blocks + [(prefix + "ffn_norm.weight", (dim,)), (prefix + "ffn_norm.bias", (dim,)),
                     (prefix + "ffn.0.weight", (2 * dim, dim)), (prefix + "ffn.0.bias", (2 * dim,)),
                     (prefix + "ffn.2.weight", (dim, 2 * dim)), (prefix + "ffn.2.bias", (dim,))]


def layout(module):
    return [(key, tuple(value.shape)) for key, value in module.state_dict().items()]


def randomized(module, seed=0):
    """The module with every parameter moved well away from its init, so that no term of the forward is ~0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=generator))
    return module


# ----- tests -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_extras", [True, False])
def test_selective_scan_is_the_recurrence(with_extras):
    g = torch.Generator().manual_seed(1)
    b, d, n, length = 2, 3, 4, 6
    u, delta, z = (torch.randn(b, d, length, generator=g) for _ in range(3))
    A = -torch.rand(d, n, generator=g) * 2
    B, C = (torch.randn(b, n, length, generator=g) for _ in range(2))
    D, bias = torch.randn(d, generator=g), torch.randn(d, generator=g)
    if with_extras:
        ours = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True)
        expected = recurrence(u, delta, A, B, C, D, z, bias, softplus=True)
    else:
        delta = delta.abs()
        ours = selective_scan(u, delta, A, B, C, None, delta_softplus=False)
        expected = recurrence(u, delta, A, B, C, softplus=False)
    assert ours.dtype == torch.float32 and ours.shape == (b, d, length)
    assert (ours.double() - expected).abs().max() <= 1e-5


def test_mamba_forward_is_the_recurrence():
    torch.manual_seed(0)
    mamba = randomized(Mamba(6, d_state=3, d_conv=3, expand=2))
    x = torch.randn(2, 5, 6)
    with torch.no_grad():
        out = mamba(x)
    assert out.shape == x.shape
    assert (out.double() - mamba_reference(mamba.state_dict(), x)).abs().max() <= 1e-5


def test_mamba_state_dict_is_mamba_ssm_s():
    assert layout(Mamba(20, d_state=5, d_conv=3, expand=2)) == [
        ("A_log", (40, 5)), ("D", (40,)), ("in_proj.weight", (80, 20)), ("conv1d.weight", (40, 1, 3)),
        ("conv1d.bias", (40,)), ("x_proj.weight", (12, 40)), ("dt_proj.weight", (40, 2)), ("dt_proj.bias", (40,)),
        ("out_proj.weight", (20, 40))]


def test_mamba_init_is_mamba_ssm_s():
    mamba = Mamba(20, d_state=5, d_conv=3, expand=2)
    assert torch.equal(mamba.A_log, torch.log(torch.arange(1.0, 6.0)).repeat(40, 1))
    assert torch.equal(mamba.D, torch.ones(40))
    assert mamba.dt_proj.weight.abs().max() <= 2 ** -0.5
    dt = F.softplus(mamba.dt_proj.bias.detach())
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)


def test_mamba_fusion_state_dict_is_s_vrt_s():
    dim, mixer = 4, (3, 3, 2)
    expected = ([("alpha", (1, 3, 1, 1))]
                + conv_layout("rgb_context_encoder.0", dim, 3, 3) + conv_layout("rgb_context_encoder.2", dim, dim, 3)
                + conv_layout("spike_token_encoder.0", dim, 1, 3) + conv_layout("spike_token_encoder.2", dim, dim, 3)
                + block_layout("mamba_token_mixer.0.", dim, *mixer) + block_layout("mamba_token_mixer.1.", dim, *mixer)
                + conv_layout("fusion_writeback_head.body.0", dim, dim, 3)
                + conv_layout("fusion_writeback_head.delta", 3, dim, 1)
                + conv_layout("fusion_writeback_head.gate", 3, dim, 1))
    assert layout(MambaFusion(3, 1, 3, MAMBA_PARAMS)) == expected


def test_dual_scale_fusion_state_dict_is_s_vrt_s():
    dim, mixer = 4, (3, 2, 1)
    expected = ([("alpha", (1, 3, 1, 1))]
                + conv_layout("spike_projector.0", dim, 1, 3) + conv_layout("spike_projector.2", dim, dim, 3)
                + conv_layout("rgb_context_encoder.0", dim, 3, 3) + conv_layout("rgb_context_encoder.2", dim, dim, 3)
                + stage_layout("local_stage.", 1, dim, *mixer)
                + [("summary_gate.weight", (1, dim)), ("summary_gate.bias", (1,))]
                + stage_layout("global_stage.", 2, dim, *mixer)
                + conv_layout("fusion_body.0", dim, dim, 3) + conv_layout("fusion_body.2", dim, dim, 3)
                + conv_layout("delta_head", 3, dim, 1) + conv_layout("gate_head", 3, dim, 1))
    assert layout(DualScaleTemporalMambaFusion(3, 3, 3, DUAL_PARAMS)) == expected


@pytest.mark.parametrize("build, reference", [
    (lambda: MambaFusion(3, 1, 3, MAMBA_PARAMS),
     lambda state, rgb, spike: mamba_fusion_reference(state, rgb, spike, stride=2, layers=2)),
    (lambda: DualScaleTemporalMambaFusion(3, 3, 3, DUAL_PARAMS),
     lambda state, rgb, spike: dual_fusion_reference(state, rgb, spike, stride=2, local_layers=1, global_layers=2)),
], ids=["mamba", "dual_scale_temporal_mamba"])
def test_mamba_fusion_forward_is_its_definition(build, reference):
    torch.manual_seed(0)
    operator = randomized(build())
    rgb, spike = torch.randn(1, 2, 3, 6, 5), torch.rand(1, 2, 3, 6, 5)
    with torch.no_grad():
        out = operator(rgb, spike)
    expected = reference(operator.state_dict(), rgb, spike)
    assert out.shape == rgb.shape and (out - rgb).abs().max() > 1e-2
    assert (out.double() - expected).abs().max() <= 1e-4


def test_token_chunks_and_amp_policy_do_not_change_the_mixing():
    torch.manual_seed(0)
    whole = randomized(MambaFusion(3, 1, 3, MAMBA_PARAMS))
    chunked = MambaFusion(3, 1, 3, {**MAMBA_PARAMS, "token_chunk_size": 4, "mamba_amp_policy": " Autocast "})
    chunked.load_state_dict(whole.state_dict())
    rgb, spike = torch.randn(1, 2, 3, 6, 5), torch.rand(1, 2, 3, 6, 5)
    with torch.no_grad():
        assert torch.allclose(whole(rgb, spike), chunked(rgb, spike), atol=1e-6)


@pytest.mark.parametrize("operator, params, key", [
    (MambaFusion, {"d_state": 0}, "d_state"),
    (MambaFusion, {"model_dim": 2.5}, "model_dim"),
    (MambaFusion, {"num_layers": -1}, "num_layers"),
    (MambaFusion, {"init_gate_bias": "low"}, "init_gate_bias"),
    (MambaFusion, {"mamba_amp_policy": "fp64"}, "mamba_amp_policy"),
    (MambaFusion, {"enable_diagnostics": "yes"}, "enable_diagnostics"),
    (MambaFusion, {"token_dims": 8}, "token_dims"),
    (MambaFusion, {"patch_stride": 4}, "patch_stride"),
    (DualScaleTemporalMambaFusion, {"expand": True}, "expand"),
    (DualScaleTemporalMambaFusion, {"alpha_init": float("nan")}, "alpha_init"),
    (DualScaleTemporalMambaFusion, {"token_stride": 4}, "token_stride"),
])
def test_bad_operator_params_name_the_key(operator, params, key):
    with pytest.raises(ConfigError, match=f"netG.fusion.operator_params.{key} "):
        operator(3, 1, 3, params)


def test_an_unknown_key_lists_the_known_ones():
    with pytest.raises(ConfigError, match="known options: .*d_conv.*global_layers.*patch_stride"):
        DualScaleTemporalMambaFusion(3, 1, 3, {"num_layers": 2})


@pytest.mark.parametrize("operator, chans, name", [
    (MambaFusion, (3, 2, 3), "spike_chans"), (MambaFusion, (3, 1, 4), "netG.fusion.out_chans"),
    (DualScaleTemporalMambaFusion, (1, 3, 3), "rgb_chans"), (DualScaleTemporalMambaFusion, (3, 0, 3), "spike_chans"),
])
def test_unsupported_channels_are_config_errors(operator, chans, name):
    with pytest.raises(ConfigError, match=name):
        operator(*chans, {})


def test_contract_attributes():
    for operator in (MambaFusion(3, 1, 3, {}), DualScaleTemporalMambaFusion(3, 5, 3, {})):
        assert operator.frame_contract == "collapsed" and operator.expects_structured_early
        assert (operator.rgb_chans, operator.out_chans) == (3, 3)


def test_operators_train_on_cpu_without_mamba_ssm(monkeypatch):
    monkeypatch.setitem(sys.modules, "mamba_ssm", None)  # any import of mamba_ssm now raises ImportError
    scan_module._cuda_scan_kernel.cache_clear()
    try:
        for operator in (MambaFusion(3, 1, 3, MAMBA_PARAMS), DualScaleTemporalMambaFusion(3, 3, 3, DUAL_PARAMS)):
            out = operator(torch.randn(1, 2, 3, 6, 5), torch.rand(1, 2, 3, 6, 5))
            out.square().mean().backward()
            assert out.shape == (1, 2, 3, 6, 5) and torch.isfinite(out).all()
            a_logs = [p for name, p in operator.named_parameters() if name.endswith("A_log")]
            assert a_logs and all(p.grad is not None and p.grad.abs().sum() > 0 for p in a_logs)
    finally:
        scan_module._cuda_scan_kernel.cache_clear()
