"""``dcn_type: DCNv4``: S-VRT's parameter layout, and the package's kernel wired as S-VRT wires it. The kernel is a
CUDA extension; here a stand-in computed from DCNv4's definition (``cpu_dcnv4/``) plays the installed package."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

from ds_deblur.errors import ConfigError
from ds_deblur.models.svrt.dcnv4 import DCNv4PackFlowGuided, kernel_groups
from ds_deblur.models.svrt.net import SVRTNet
from ds_deblur.models.svrt.options import parse_net_options
from tests.models.svrt.test_net import TINY, fusion

STAND_IN = Path(__file__).with_name("cpu_dcnv4")


@pytest.fixture
def dcnv4_installed(monkeypatch):
    monkeypatch.syspath_prepend(str(STAND_IN))
    yield
    sys.modules.pop("DCNv4", None)


def svrt_dcnv4_keys(channels: int, groups: int, pa_frames: int = 2) -> list[str]:
    """S-VRT's DCNv4PackFlowGuided parameters, written out from its definition: DCNv4's module first, then the
    offset predictor whose last conv emits DCNv4's packed offsets and modulation (K = groups * 9, 3K to 8s)."""
    packed = math.ceil(groups * 9 * 3 / 8) * 8
    c = channels
    shapes = [("dcn.offset_mask.weight", (packed, c)), ("dcn.offset_mask.bias", (packed,)),
              ("dcn.value_proj.weight", (c, c)), ("dcn.value_proj.bias", (c,)),
              ("dcn.output_proj.weight", (c, c)), ("dcn.output_proj.bias", (c,)),
              ("conv_offset.0.weight", (c, 2 * c + pa_frames, 3, 3)), ("conv_offset.0.bias", (c,)),
              ("conv_offset.2.weight", (c, c, 3, 3)), ("conv_offset.2.bias", (c,)),
              ("conv_offset.4.weight", (c, c, 3, 3)), ("conv_offset.4.bias", (c,)),
              ("conv_offset.6.weight", (packed, c, 3, 3)), ("conv_offset.6.bias", (packed,))]
    return [f"{name} {'x'.join(map(str, shape))}" for name, shape in shapes]


def test_groups_follow_svrt_rule():
    assert kernel_groups(96, 16) == 6  # 16 groups would get 6 channels each; 6 is the most with 16 each
    assert kernel_groups(64, 4) == 4
    assert kernel_groups(16, 4) == 1


def test_network_has_svrt_dcnv4_layout(dcnv4_installed):
    net = {**TINY, "embed_dims": [32] * 8, "deformable_groups": 2, "dcn_type": "DCNv4"}
    model = SVRTNet(parse_net_options({**net, **fusion(7, "pase_residual", contract="collapsed")}))
    for i in range(1, 8):
        prefix = f"stage{i}.pa_deform."
        ours = [f"{k[len(prefix):]} {'x'.join(map(str, v.shape))}" for k, v in model.state_dict().items()
                if k.startswith(prefix)]
        assert ours == svrt_dcnv4_keys(32, 2)
    keys = list(model.state_dict())
    assert keys.index("stage1.pa_deform.conv_offset.6.bias") < keys.index("stage1.pa_fuse.fc11.weight")
    blur, spike = torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 4, 64, 64)
    out = model(blur, spike)
    out.mean().backward()
    assert out.shape == blur.shape
    assert model.stage1.pa_deform.conv_offset[6].weight.grad.abs().sum() > 0


def _steered(module: DCNv4PackFlowGuided, tap: int) -> None:
    """Offsets zero and every group's modulation one at ``tap`` and zero elsewhere, whatever the input."""
    last = module.conv_offset[6]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    taps = module.dcn.taps // module.groups
    with torch.no_grad():
        for g in range(module.groups):
            last.bias[g * taps * 3 + 2 * taps + tap] = 1.0


@pytest.mark.parametrize("softmax", [False, True])
def test_taps_sample_where_the_kernel_packing_says(dcnv4_installed, softmax):
    torch.manual_seed(0)
    module = DCNv4PackFlowGuided(32, 32, 3, padding=1, deformable_groups=2, apply_softmax=softmax)
    x, warped, current, flows = torch.rand(2, 32, 8, 8), torch.rand(2, 32, 8, 8), torch.rand(2, 32, 8, 8), \
        torch.rand(2, 2, 8, 8)
    value = module.dcn.value_proj(x.permute(0, 2, 3, 1))
    shifted = torch.zeros_like(value)
    shifted[:, :, :-1] = value[:, :, 1:]  # tap (column 2, row 1): the pixel to the right, zero past the edge
    for tap, sampled in ((4, value), (7, shifted)):
        _steered(module, tap)
        if softmax:
            sampled = torch.softmax(sampled.flatten(1, 2), dim=1).view_as(sampled)
        expected = module.dcn.output_proj(sampled).permute(0, 3, 1, 2)
        torch.testing.assert_close(module(x, warped, current, flows), expected)


def test_errors_name_the_option(dcnv4_installed):
    with pytest.raises(ConfigError, match="netG.pa_frames=2"):
        DCNv4PackFlowGuided(32, 32, pa_frames=4)
    with pytest.raises(ConfigError, match="netG.embed_dims.*divisible by 16"):
        DCNv4PackFlowGuided(24, 24, deformable_groups=4)
