import pytest
import torch

from ds_deblur.inference.tiling import blend_ramp, pad_to_multiple, restore, tile_starts


def test_tile_starts_cover_with_overlap():
    assert tile_starts(64, 64, 16) == [0]
    starts = tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 32 - 8 for a, b in zip(starts, starts[1:]))


def test_pad_to_multiple_replicates_edges():
    x = torch.arange(2 * 1 * 1 * 5 * 6, dtype=torch.float32).reshape(2, 1, 1, 5, 6)
    y = pad_to_multiple(x, 4)
    assert y.shape[-2:] == (8, 8)
    assert torch.equal(y[..., :5, :6], x) and torch.equal(y[..., 7, :6], x[..., 4, :])


def test_ramp_is_positive_and_flat_inside():
    ramp = blend_ramp(32, 8, torch.device("cpu"))
    assert ramp.min() > 0 and ramp[8:24].eq(1).all()


def _local_model(blur: torch.Tensor, spike: torch.Tensor, flow_spike=None) -> torch.Tensor:
    # A per-pixel function of the inputs: tiling must reproduce it exactly (up to float rounding).
    out = blur * 0.5 + spike.mean(dim=2, keepdim=True)
    return out if flow_spike is None else out + flow_spike.mean(dim=(1, 2))[:, None, None]


def test_tiled_equals_whole_for_a_local_model():
    blur, spike = torch.rand(1, 3, 3, 40, 56), torch.rand(1, 3, 4, 40, 56)
    whole = restore(_local_model, blur, spike, multiple=8)
    tiled = restore(_local_model, blur, spike, multiple=8, tile=16, overlap=4)
    assert whole.shape == blur.shape and torch.allclose(whole, tiled, atol=1e-6)


def test_flow_spike_is_padded_and_tiled_with_the_frames():
    blur, spike, flow = torch.rand(1, 3, 3, 40, 56), torch.rand(1, 3, 4, 40, 56), torch.rand(1, 6, 25, 40, 56)
    whole = restore(_local_model, blur, spike, multiple=8, flow_spike=flow)
    tiled = restore(_local_model, blur, spike, multiple=8, tile=16, overlap=4, flow_spike=flow)
    assert torch.allclose(whole, _local_model(blur, spike, flow), atol=1e-6)
    assert torch.allclose(whole, tiled, atol=1e-6)


def test_tile_larger_than_frame_is_the_untiled_path():
    blur, spike = torch.rand(1, 2, 3, 24, 24), torch.rand(1, 2, 4, 24, 24)
    calls = []

    def forward(b, s, f):
        calls.append(b.shape)
        return _local_model(b, s, f)

    restore(forward, blur, spike, multiple=8, tile=64)
    assert calls == [torch.Size([1, 2, 3, 24, 24])]


def test_tile_must_fit_the_model_multiple():
    with pytest.raises(ValueError, match="multiple of 16"):
        restore(_local_model, torch.rand(1, 2, 3, 64, 64), torch.rand(1, 2, 4, 64, 64), multiple=16, tile=24)
