"""SpyNet: official key names load, flow shapes/scales, batch independence (VRT batches both directions)."""
from pathlib import Path

import pytest
import torch

from ds_deblur.models.spynet import SpyNet

KEYS_FILE = Path(__file__).with_name("vrt_gopro_keys.txt")


def _released_state(seed: int) -> dict:
    """What spynet_sintel_final holds: the basic_module weights only (no mean/std)."""
    torch.manual_seed(seed)
    return {k: torch.randn_like(v) for k, v in SpyNet().state_dict().items() if k.startswith("basic_module")}


def test_state_dict_names_match_the_official_vrt_copy():
    official = [line.split()[0][len("spynet."):] for line in KEYS_FILE.read_text().splitlines()
                if line.startswith("spynet.")]
    assert list(SpyNet().state_dict()) == official


@pytest.mark.parametrize("wrap", [True, False])
def test_loads_released_file(tmp_path, wrap):
    state = _released_state(0)
    path = tmp_path / "spynet.pth"
    torch.save({"params": state} if wrap else state, path)
    net = SpyNet(load_path=path)
    for k, v in state.items():
        torch.testing.assert_close(net.state_dict()[k], v)
    torch.testing.assert_close(net.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        SpyNet(load_path=tmp_path / "nope.pth")
    state = _released_state(0)
    state.pop("basic_module.3.basic_module.4.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"params": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"basic_module\.3\.basic_module\.4\.bias.*extra\.weight"):
        SpyNet(load_path=tmp_path / "bad.pth")


def test_flow_pyramid_shapes_and_batch_independence():
    torch.manual_seed(1)
    net = SpyNet(return_levels=(2, 3, 4, 5)).eval()
    with torch.no_grad():  # non-trivial flows
        for level in net.basic_module:
            level.basic_module[-1].weight.mul_(20)
    ref, supp = torch.rand(3, 3, 72, 40), torch.rand(3, 3, 72, 40)  # not multiples of 32: resized internally
    with torch.no_grad():
        flows = net(ref, supp)
        single = net(ref[1:2], supp[1:2])
    assert [tuple(f.shape) for f in flows] == [(3, 2, 72, 40), (3, 2, 36, 20), (3, 2, 18, 10), (3, 2, 9, 5)]
    assert flows[0].abs().max() > 0.5
    for batched, alone in zip(flows, single):
        torch.testing.assert_close(batched[1:2], alone, rtol=1e-4, atol=1e-4)


def test_rejects_frames_too_small_for_the_pyramid():
    with pytest.raises(ValueError, match="H=32, W=64"):
        SpyNet()(torch.rand(1, 3, 32, 64), torch.rand(1, 3, 32, 64))
