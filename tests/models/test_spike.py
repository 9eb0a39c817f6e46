import pytest
import torch
import torch.nn.functional as F

from ds_deblur.models.spike import SpikeEncoder3D, SpikeTemporalSA, frames_conv3d


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_encoder_scales_match_vrt_stages_and_keep_time():
    torch.manual_seed(0)
    enc = SpikeEncoder3D(in_bins=6, channels_per_scale=[8, 12, 16, 20], num_res_blocks=1)
    feats = enc(torch.randn(2, 3, 6, 16, 24))
    assert [tuple(f.shape) for f in feats] == [
        (2, 8, 3, 16, 24), (2, 12, 3, 8, 12), (2, 16, 3, 4, 6), (2, 20, 3, 2, 3)]
    assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("kernel, padding, stride", [(3, 1, 1), (3, 1, 2), ((3, 1, 1), (1, 0, 0), 1),
                                                     ((1, 3, 3), (0, 1, 1), 2), (3, 0, 1)])
def test_frame_convolutions_equal_conv3d_with_gradients(kernel, padding, stride):
    torch.manual_seed(0)
    kernel = (kernel,) * 3 if isinstance(kernel, int) else kernel
    padding = (padding,) * 3 if isinstance(padding, int) else padding
    x, weight, bias = (torch.randn(*shape, dtype=torch.float64, requires_grad=True)
                       for shape in ((2, 5, 4, 9, 11), (7, 5, *kernel), (7,)))
    ref = F.conv3d(x, weight, bias, (1, stride, stride), padding)
    out = frames_conv3d(x, weight, bias, (stride, stride), padding)
    torch.testing.assert_close(out, ref)
    grad = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, (x, weight, bias), grad),
                               torch.autograd.grad(ref, (x, weight, bias), grad))


def test_encoder_convolutions_on_cpu_equal_the_native_conv3d():
    torch.manual_seed(0)
    enc = SpikeEncoder3D(in_bins=6, channels_per_scale=[8, 12, 16, 20], num_res_blocks=1)
    x = torch.randn(1, 6, 3, 16, 24)
    for conv in (enc.in_proj, enc.downs[0]):
        torch.testing.assert_close(conv(x), torch.nn.Conv3d.forward(conv, x), atol=1e-5, rtol=1e-5)
        x = torch.relu(conv(x))


def test_encoder_rejects_wrong_bin_count():
    enc = SpikeEncoder3D(in_bins=8, channels_per_scale=[4] * 4)
    with pytest.raises(ValueError, match=r"C=8.*got \(1, 2, 5, 8, 8\)"):
        enc(torch.randn(1, 2, 5, 8, 8))


def test_original_design_parameter_counts():
    # K=32, C=96 at every scale, two residual blocks per scale, one attention block per scale (ratio-2 MLP)
    assert _n_params(SpikeEncoder3D(32, [96] * 4)) == 4_812_672
    assert _n_params(SpikeTemporalSA([96] * 4)) == 299_136


def test_temporal_sa_keeps_shapes():
    torch.manual_seed(0)
    sa = SpikeTemporalSA([8, 12, 16, 20], heads=4)
    feats = [torch.randn(1, c, 3, 8 >> i, 8 >> i) for i, c in enumerate([8, 12, 16, 20])]
    out = sa(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert not torch.allclose(out[0], feats[0])


def test_temporal_sa_chunked_equals_unchunked():
    torch.manual_seed(0)
    whole = SpikeTemporalSA([8, 8], heads=2, chunk_pixels=10**6).double()
    chunked = SpikeTemporalSA([8, 8], heads=2, chunk_pixels=7).double()
    chunked.load_state_dict(whole.state_dict())
    feats = [torch.randn(2, 8, 4, 6, 5, dtype=torch.float64), torch.randn(2, 8, 4, 3, 3, dtype=torch.float64)]
    for a, b in zip(whole(feats), chunked(feats)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_temporal_sa_attends_over_time_within_a_pixel_only():
    torch.manual_seed(0)
    sa = SpikeTemporalSA([8], heads=2).double()
    x = torch.randn(1, 8, 4, 5, 5, dtype=torch.float64)
    y = x.clone()
    y[:, :, 0, 2, 3] += 1.0  # change frame 0 at one pixel
    delta = (sa([y])[0] - sa([x])[0]).abs().sum(dim=1)  # (1, T, H, W)
    assert (delta[0, :, 2, 3] > 0).all()  # every frame of that pixel sees it
    delta[0, :, 2, 3] = 0
    assert delta.max() == 0  # no other pixel does


def test_temporal_sa_rejects_wrong_scale_count():
    with pytest.raises(ValueError, match="expected 2 spike scales"):
        SpikeTemporalSA([4, 4])([torch.randn(1, 4, 2, 2, 2)])


def test_bf16_encoder_gradients_are_finite_on_cpu():
    # PyTorch's CPU bf16 Conv3d returns non-finite weight gradients when strided; the encoder works around it.
    encoder = SpikeEncoder3D(4, [16, 16, 16, 16], num_res_blocks=1).to(torch.bfloat16)
    feats = encoder(torch.randn(1, 2, 4, 32, 32, dtype=torch.bfloat16))
    sum(f.float().square().mean() for f in feats).backward()
    for name, param in encoder.named_parameters():
        assert torch.isfinite(param.grad).all(), name
