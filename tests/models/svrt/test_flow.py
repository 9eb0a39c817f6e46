"""S-VRT's flow networks: SCFlow's names/shapes, its forward restated from the definition, float32 compute under a
bf16 model, checkpoint layouts and errors, and the FlowNet wrapper (``model.*`` keys, four scales, gradient gating)."""
import pytest
import torch
import torch.nn.functional as F

from ds_deblur.errors import ConfigError, WeightsNotFoundError
from ds_deblur.models.spynet import SpyNet
from ds_deblur.models.svrt.flow import FlowNet, build_flow
from ds_deblur.models.svrt.scflow import SCFlow, _align_slices, correlation

# S-VRT 2ac8c0b, gopro_server_pase_scflow: the `spynet.model.*` entries with the prefix removed, in order.
SCFLOW_KEYS = [
    ("spike_representation.conv_s1.0.weight", (32, 25, 3, 3)),
    ("spike_representation.conv_s1.0.bias", (32,)),
    ("spike_representation.conv_s2.0.weight", (32, 32, 3, 3)),
    ("spike_representation.conv_s2.0.bias", (32,)),
    ("feature_encoder.conv_list.0.0.0.weight", (32, 32, 3, 3)),
    ("feature_encoder.conv_list.0.0.0.bias", (32,)),
    ("feature_encoder.conv_list.0.1.0.weight", (32, 32, 3, 3)),
    ("feature_encoder.conv_list.0.1.0.bias", (32,)),
    ("feature_encoder.conv_list.1.0.0.weight", (64, 32, 3, 3)),
    ("feature_encoder.conv_list.1.0.0.bias", (64,)),
    ("feature_encoder.conv_list.1.1.0.weight", (64, 64, 3, 3)),
    ("feature_encoder.conv_list.1.1.0.bias", (64,)),
    ("feature_encoder.conv_list.2.0.0.weight", (96, 64, 3, 3)),
    ("feature_encoder.conv_list.2.0.0.bias", (96,)),
    ("feature_encoder.conv_list.2.1.0.weight", (96, 96, 3, 3)),
    ("feature_encoder.conv_list.2.1.0.bias", (96,)),
    ("feature_encoder.conv_list.3.0.0.weight", (128, 96, 3, 3)),
    ("feature_encoder.conv_list.3.0.0.bias", (128,)),
    ("feature_encoder.conv_list.3.1.0.weight", (128, 128, 3, 3)),
    ("feature_encoder.conv_list.3.1.0.bias", (128,)),
    ("flow_estimators.conv1.0.weight", (96, 115, 3, 3)),
    ("flow_estimators.conv1.0.bias", (96,)),
    ("flow_estimators.conv2.0.weight", (64, 211, 3, 3)),
    ("flow_estimators.conv2.0.bias", (64,)),
    ("flow_estimators.conv3.0.weight", (32, 275, 3, 3)),
    ("flow_estimators.conv3.0.bias", (32,)),
    ("flow_estimators.conv4.0.weight", (2, 307, 3, 3)),
    ("flow_estimators.conv4.0.bias", (2,)),
    ("conv_1x1.0.0.weight", (32, 128, 1, 1)),
    ("conv_1x1.0.0.bias", (32,)),
    ("conv_1x1.1.0.weight", (32, 96, 1, 1)),
    ("conv_1x1.1.0.bias", (32,)),
    ("conv_1x1.2.0.weight", (32, 64, 1, 1)),
    ("conv_1x1.2.0.bias", (32,)),
    ("conv_1x1.3.0.weight", (32, 32, 1, 1)),
    ("conv_1x1.3.0.bias", (32,)),
]


def _spikes(*shape: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g) < 0.3).float()


def _scflow(seed: int = 0, **kwargs) -> SCFlow:
    torch.manual_seed(seed)
    return SCFlow(**kwargs).eval()


# -- definitions restated independently of the implementation -------------------------------------------------------

def _warp_def(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp, zeros outside: grid_sample on corner-aligned normalised coordinates."""
    h, w = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    gx = 2 * (xs + flow[:, 0]) / (w - 1) - 1
    gy = 2 * (ys + flow[:, 1]) / (h - 1) - 1
    return F.grid_sample(x, torch.stack((gx, gy), -1), mode="bilinear", padding_mode="zeros", align_corners=True)


def _corr_def(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
    """9x9 correlation via unfold: every displaced 9x9 patch of f2 (zero padded) dotted with f1, / C, leaky 0.1."""
    n, c, h, w = f1.shape
    patches = F.unfold(F.pad(f2, [4] * 4), kernel_size=9).view(n, c, 81, h, w)
    return F.leaky_relu((f1.unsqueeze(2) * patches).sum(1) / c, 0.1)


def _scflow_def(sd: dict, seq1: torch.Tensor, seq2: torch.Tensor) -> list[torch.Tensor]:
    def conv(x, name, stride=1, act=True):
        weight = sd[f"{name}.0.weight"]
        y = F.conv2d(x, weight, sd[f"{name}.0.bias"], stride, weight.shape[-1] // 2)
        return F.leaky_relu(y, 0.1) if act else y

    def pyramid(seq):
        x = conv(conv(seq, "spike_representation.conv_s1"), "spike_representation.conv_s2")
        levels = []
        for i in range(4):
            x = conv(conv(x, f"feature_encoder.conv_list.{i}.0", stride=1 if i == 0 else 2),
                     f"feature_encoder.conv_list.{i}.1")
            levels.append(x)
        return levels[::-1]

    def estimate(x):
        for i in (1, 2, 3):
            x = torch.cat([conv(x, f"flow_estimators.conv{i}"), x], 1)
        return conv(x, "flow_estimators.conv4", act=False)

    p1, p2 = pyramid(seq1), pyramid(seq2)
    flow = torch.zeros(seq1.shape[0], 2, *p1[0].shape[-2:])
    flows = []
    for i, (a, b) in enumerate(zip(p1, p2)):
        if i:
            flow = F.interpolate(flow * 2, scale_factor=2, mode="bilinear", align_corners=True)
            b = _warp_def(b, flow)
        flow = flow + estimate(torch.cat([_corr_def(a, b), conv(a, f"conv_1x1.{i}", act=False), flow], 1))
        flows.append(flow)
    return flows[::-1]


# -- SCFlow -----------------------------------------------------------------------------------------------------------

def test_scflow_state_dict_matches_svrt_names_shapes_and_order():
    assert [(k, tuple(v.shape)) for k, v in SCFlow().state_dict().items()] == SCFLOW_KEYS


def test_correlation_matches_the_per_pixel_definition():
    g = torch.Generator().manual_seed(0)
    f1, f2 = torch.randn(1, 3, 5, 6, generator=g), torch.randn(1, 3, 5, 6, generator=g)
    expected = torch.zeros(1, 81, 5, 6)
    for dy in range(-4, 5):
        for dx in range(-4, 5):
            for y in range(5):
                for x in range(6):
                    if 0 <= y + dy < 5 and 0 <= x + dx < 6:
                        expected[0, (dy + 4) * 9 + dx + 4, y, x] = (f1[0, :, y, x] * f2[0, :, y + dy, x + dx]).mean()
    torch.testing.assert_close(correlation(f1, f2), F.leaky_relu(expected, 0.1))


def test_scflow_forward_matches_the_definition():
    net = _scflow()
    seq1, seq2 = _spikes(2, 25, 16, 24, seed=1), _spikes(2, 25, 16, 24, seed=2)
    with torch.no_grad():
        flows = net(seq1, seq2)
        expected = _scflow_def(net.state_dict(), seq1, seq2)
    assert [tuple(f.shape) for f in flows] == [(2, 2, 16, 24), (2, 2, 8, 12), (2, 2, 4, 6), (2, 2, 2, 3)]
    assert flows[0].abs().max() > 1e-2
    for got, want in zip(flows, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_slice_alignment_moves_slice_k_by_flow_times_k_minus_12_over_dt():
    seq = torch.randn(1, 25, 4, 32)
    flow = torch.zeros(1, 2, 4, 32)
    flow[:, 0] = 2.0
    aligned = _align_slices(seq, flow, dt=2.0)  # slice k samples x + (k - 12)
    for k in range(25):
        shift = k - 12
        for x in range(32):
            want = seq[0, k, :, x + shift] if 0 <= x + shift < 32 else torch.zeros(4)
            torch.testing.assert_close(aligned[0, k, :, x], want)


def test_bf16_model_computes_and_returns_float32():
    net = _scflow()
    rounded = _scflow()
    rounded.load_state_dict({k: v.bfloat16().float() for k, v in net.state_dict().items()})
    net.bfloat16()
    seq1, seq2 = _spikes(1, 25, 8, 16, seed=3), _spikes(1, 25, 8, 16, seed=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        flows = net(seq1.bfloat16(), seq2.bfloat16())
    with torch.no_grad():
        expected = rounded(seq1, seq2)
    assert all(f.dtype == torch.float32 for f in flows)
    for got, want in zip(flows, expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_batch_norm_variant_names_and_bf16_running_stats():
    net = SCFlow(batch_norm=True)
    keys = list(net.state_dict())
    assert keys[:4] == ["spike_representation.conv_s1.0.weight", "spike_representation.conv_s1.0.bias",
                        "spike_representation.conv_s1.1.weight", "spike_representation.conv_s1.1.bias"]
    assert "flow_estimators.conv1.1.weight" not in keys  # S-VRT's decoder has no BatchNorm
    net.train().bfloat16()
    net(_spikes(2, 25, 8, 8), _spikes(2, 25, 8, 8, seed=1))
    bn = net.spike_representation.conv_s1[1]
    assert bn.running_mean.dtype == torch.bfloat16 and bn.running_mean.abs().sum() > 0
    assert int(bn.num_batches_tracked) == 2


@pytest.mark.parametrize("shape, rule", [((1, 25, 12, 16), "divisible by 8"), ((1, 3, 8, 8), "25")])
def test_scflow_rejects_inputs_it_cannot_take(shape, rule):
    with pytest.raises(ValueError, match=rule):
        SCFlow()(torch.zeros(shape), torch.zeros(shape))


# -- checkpoints ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["release", "plain"])
def test_build_flow_loads_svrt_checkpoint_layouts(tmp_path, layout):
    state = _scflow(seed=5).state_dict()
    path = tmp_path / "scflow.pth"
    torch.save({"epoch": 40, "arch": "vfnet6_2d4", "state_dict": state} if layout == "release" else state, path)
    flow = build_flow("scflow", str(path), {})
    assert flow.input_type == "spike"
    for k, v in state.items():
        assert torch.equal(flow.model.state_dict()[k], v), k


def test_checkpoint_errors_name_the_option_file_and_keys(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFoundError, match=rf"netG\.optical_flow\.checkpoint.*{missing}"):
        build_flow("scflow", str(missing), {})
    with pytest.raises(WeightsNotFoundError, match=r"netG\.optical_flow\.checkpoint"):
        build_flow("spynet", str(missing), {})

    state = _scflow().state_dict()
    prefixed = tmp_path / "prefixed.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, prefixed)  # S-VRT does not strip it
    with pytest.raises(ValueError, match=r"prefixed\.pth.*missing 36.*unexpected 36 \['module\."):
        build_flow("scflow", str(prefixed), {})

    state["conv_1x1.0.0.weight"] = torch.zeros(32, 128, 3, 3)
    state["extra.bias"] = torch.zeros(2)
    bad = tmp_path / "bad.pth"
    torch.save({"state_dict": state}, bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*unexpected 1 \['extra\.bias'\].*conv_1x1\.0\.0\.weight"):
        build_flow("scflow", str(bad), {})


def test_random_init_without_checkpoint_is_pytorch_default():
    torch.manual_seed(7)
    built = build_flow("scflow", None, {})
    torch.manual_seed(7)
    plain = SCFlow()
    for k, v in plain.state_dict().items():
        assert torch.equal(built.model.state_dict()[k], v), k


# -- FlowNet / options ------------------------------------------------------------------------------------------------

def test_spynet_flownet_keys_and_scales():
    flow = build_flow("spynet", None, {"device": "cuda"})
    assert flow.input_type == "rgb"
    assert list(flow.state_dict()) == [f"model.{k}" for k in SpyNet().state_dict()]
    with torch.no_grad():
        flows = flow(torch.rand(1, 3, 40, 48), torch.rand(1, 3, 40, 48))
    assert [tuple(f.shape) for f in flows] == [(1, 2, 40, 48), (1, 2, 20, 24), (1, 2, 10, 12), (1, 2, 5, 6)]


def test_flownet_tracks_gradients_only_while_a_flow_parameter_is_trainable():
    flow = FlowNet(_scflow(), "spike")
    seq1 = _spikes(1, 25, 8, 8).requires_grad_()
    seq2 = _spikes(1, 25, 8, 8, seed=1)
    assert flow(seq1, seq2)[0].requires_grad
    flow.requires_grad_(False)
    assert not flow(seq1, seq2)[0].requires_grad


@pytest.mark.parametrize("module, params, message", [
    ("raft", {}, r"netG\.optical_flow\.module must be one of spynet, scflow, got 'raft'"),
    ("sea_raft", {}, r"not supported here.*spynet.*scflow"),
    ("scflow", {"return_levels": [5]}, r"netG\.optical_flow\.params\.return_levels"),
    ("spynet", {"dt": 10}, r"netG\.optical_flow\.params\.dt"),
    ("scflow", {"dt": 0}, r"params\.dt must be a number > 0"),
    ("scflow", {"batch_norm": "yes"}, r"params\.batch_norm must be true or false"),
])
def test_bad_options_raise_config_errors(module, params, message):
    with pytest.raises(ConfigError, match=message):
        build_flow(module, None, params)


def test_module_aliases_and_params():
    assert build_flow("Spike_Flow", None, {"dt": 5, "batch_norm": False, "device": "cpu"}).model.dt == 5
    assert isinstance(build_flow("SPY", None, None).model, SpyNet)
