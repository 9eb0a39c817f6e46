import pytest
import torch

from ds_deblur.models.fusion import (TemporalCrossAttnFuse, TemporalMHA, frame_distance_bias, from_pixel_tokens,
                                     to_pixel_tokens)


def _pair(shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype), torch.randn(*shape, dtype=dtype)


def test_fuse_shape_and_uses_spike():
    torch.manual_seed(0)
    fuse = TemporalCrossAttnFuse(16, heads=4)
    rgb, spike = _pair((2, 16, 3, 8, 6), torch.float32)
    out = fuse(rgb, spike)
    assert out.shape == rgb.shape
    assert not torch.allclose(out, fuse(rgb, spike + 1.0))


def test_fuse_chunked_equals_unchunked():
    torch.manual_seed(0)
    whole = TemporalCrossAttnFuse(8, heads=2, chunk_pixels=10**6).double()
    chunked = TemporalCrossAttnFuse(8, heads=2, chunk_pixels=5).double()
    chunked.load_state_dict(whole.state_dict())
    rgb, spike = _pair((2, 8, 5, 4, 7))
    torch.testing.assert_close(whole(rgb, spike), chunked(rgb, spike), rtol=0, atol=1e-12)


def test_fuse_is_per_pixel():
    torch.manual_seed(0)
    fuse = TemporalCrossAttnFuse(8, heads=2).double()
    rgb, spike = _pair((1, 8, 3, 4, 4))
    changed = spike.clone()
    changed[:, :, 1, 0, 2] -= 2.0
    delta = (fuse(rgb, changed) - fuse(rgb, spike)).abs().sum(dim=1)
    assert (delta[0, :, 0, 2] > 0).all()
    delta[0, :, 0, 2] = 0
    assert delta.max() == 0


def test_mha_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = TemporalMHA(12, heads=3).double()
    ref = torch.nn.MultiheadAttention(12, 3, batch_first=True).double()
    ref.load_state_dict(ours.state_dict())  # same parameter names and shapes
    q, kv = _pair((10, 4, 12))
    torch.testing.assert_close(ours(q, kv), ref(q, kv, kv, need_weights=False)[0])
    torch.testing.assert_close(ours(q, q), ref(q, q, q, need_weights=False)[0])


def test_pixel_token_round_trip():
    x = torch.randn(2, 3, 4, 5, 6)
    tokens = to_pixel_tokens(x)
    assert tokens.shape == (2 * 5 * 6, 4, 3)
    torch.testing.assert_close(tokens[1 * 30 + 2 * 6 + 3], x[1, :, :, 2, 3].T)
    torch.testing.assert_close(from_pixel_tokens(tokens, like=x), x)


def test_fuse_rejects_mismatched_shapes():
    fuse = TemporalCrossAttnFuse(4, heads=2)
    with pytest.raises(ValueError, match="matching shapes"):
        fuse(torch.randn(1, 4, 2, 4, 4), torch.randn(1, 4, 2, 2, 2))


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="not divisible by 4 heads"):
        TemporalCrossAttnFuse(6, heads=4)


def test_chunk_capped_below_cuda_sdpa_batch_limit():
    assert TemporalCrossAttnFuse(4, heads=2, chunk_pixels=10**6).chunk_pixels == 65535


def test_frame_distance_penalty_keeps_each_frame_to_its_own_spikes():
    torch.manual_seed(0)
    plain = TemporalCrossAttnFuse(8, heads=2).double()
    own = TemporalCrossAttnFuse(8, heads=2, frame_distance_penalty=float("inf")).double()
    own.load_state_dict(plain.state_dict())  # no parameters of its own: the same checkpoints load
    rgb, spike = _pair((1, 8, 3, 4, 4))
    changed = spike.clone()
    changed[:, :, 2] += 3.0  # the last frame's spike features only
    moved = (own(rgb, changed) - own(rgb, spike)).abs().amax(dim=(0, 1, 3, 4))
    assert moved[:2].max() == 0 and moved[2] > 0
    assert (plain(rgb, changed) - plain(rgb, spike)).abs().amax(dim=(0, 1, 3, 4)).min() > 0  # the clip mixes


def test_frame_distance_penalty_weighs_frames_by_exp_of_their_distance():
    torch.manual_seed(0)
    mha = TemporalMHA(4, heads=1).double()
    with torch.no_grad():  # keys all alike: the weights are the bias's softmax alone
        mha.in_proj_weight[4:8].zero_()
        mha.in_proj_bias.zero_()
    q, kv = _pair((1, 3, 4))
    v = torch.nn.functional.linear(kv, mha.in_proj_weight[8:], mha.in_proj_bias[8:])
    bias = frame_distance_bias(3, 1.5, torch.device("cpu"))
    weights = torch.softmax(bias.double(), dim=-1)
    torch.testing.assert_close(mha(q, kv, bias), mha.out_proj(weights @ v[0])[None])
    assert weights[1].tolist() == pytest.approx([0.1543, 0.6914, 0.1543], abs=1e-4)  # e^-1.5 : 1 : e^-1.5
    assert frame_distance_bias(3, 0.0, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="frame_distance_penalty"):
        TemporalCrossAttnFuse(8, heads=2, frame_distance_penalty=-1.0)
