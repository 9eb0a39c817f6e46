"""VRT backbone: official key layout and size, shapes, gradients, weights I/O, input checks, hook, checkpointing."""
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from ds_deblur.models.vrt import VRT, load_vrt_weights, required_multiple

KEYS_FILE = Path(__file__).with_name("vrt_gopro_keys.txt")

# Official 006_VRT_videodeblurring_GoPro configuration (main_test_vrt.py).
GOPRO = dict(upscale=1, img_size=[6, 192, 192], window_size=[6, 8, 8], depths=[8] * 7 + [4] * 4,
             indep_reconsts=[9, 10], embed_dims=[96] * 7 + [120] * 4, num_heads=[6] * 11, pa_frames=2,
             deformable_groups=16)
# Tiny: depth 4 with ratio 0.5 gives both attention groups a shifted block; T=3 makes the 2-frame window pad.
TINY = dict(upscale=1, window_size=(2, 8, 8), depths=(4,) * 7 + (2, 2), indep_reconsts=(8,),
            embed_dims=(8,) * 7 + (12, 12), num_heads=(2,) * 9, mul_attn_ratio=0.5, deformable_groups=2)


def tiny_vrt(seed: int = 0, **overrides) -> VRT:
    torch.manual_seed(seed)
    return VRT(**{**TINY, **overrides})


def frames(t: int = 3, h: int = 64, w: int = 64, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, t, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_official_gopro_config_keys_shapes_and_size():
    model = VRT(**GOPRO)
    ours = [f"{k} {','.join(map(str, v.shape))}" for k, v in model.state_dict().items()]
    assert ours == KEYS_FILE.read_text().splitlines()
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 18.32
    assert model.embed_dims == tuple(GOPRO["embed_dims"])


def test_shape_and_every_parameter_gets_a_gradient():
    model = tiny_vrt(drop_path_rate=0.0)
    out = model(frames())
    assert out.shape == (1, 3, 3, 64, 64)
    out.square().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    # conv_offset's last layer starts at zero (pure flow warping), so the layers before it get exactly zero.
    zero = {n for n, p in model.named_parameters() if not p.grad.any()}
    expected = {f"stage{s}.pa_deform.conv_offset.{i}.{t}" for s in range(1, 8) for i in (0, 2, 4)
                for t in ("weight", "bias")}
    assert zero == expected
    model.zero_grad()
    with torch.no_grad():
        for s in range(1, 8):
            getattr(model, f"stage{s}").pa_deform.conv_offset[-1].weight.normal_(0, 0.01)
    model(frames()).square().mean().backward()
    assert [n for n, p in model.named_parameters() if not p.grad.any()] == []


@pytest.mark.parametrize("wrap", [True, False])
def test_same_seed_same_model_and_weights_round_trip(tmp_path, wrap):
    a, b = tiny_vrt(seed=0).eval(), tiny_vrt(seed=0).eval()
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    path = tmp_path / "vrt.pth"
    torch.save({"params": a.state_dict()} if wrap else a.state_dict(), path)
    c = tiny_vrt(seed=1).eval()
    load_vrt_weights(c, path)
    x = frames(t=2)
    with torch.no_grad():
        torch.testing.assert_close(c(x), a(x), rtol=0, atol=0)
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)


def test_load_errors_name_missing_unexpected_and_misshapen_keys(tmp_path):
    model = tiny_vrt()
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_vrt_weights(model, tmp_path / "missing.pth")
    state = model.state_dict()
    state.pop("norm.bias")
    state["stage9.weight"] = torch.zeros(1)
    state["conv_after_body.weight"] = torch.zeros(3, 3)
    torch.save({"params": state}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing 1 \['norm.bias'\].*unexpected 1 \['stage9.weight'\].*"
                                         r"conv_after_body.weight file \(3, 3\) model \(8, 12\)"):
        load_vrt_weights(model, tmp_path / "bad.pth")


@pytest.mark.parametrize("shape,match", [
    ((3, 3, 64, 64), r"\(B, T, C, H, W\), got shape \(3, 3, 64, 64\)"),
    ((1, 3, 4, 64, 64), "expects 3 input channels .* got C=4"),
    ((1, 1, 3, 64, 64), "at least 2 frames .* got T=1"),
    ((1, 3, 3, 64, 96), "H=64, W=96 must be multiples of 64x64"),
    ((1, 3, 3, 48, 64), "H=48, W=64 must be multiples of 64x64"),
])
def test_input_checks(shape, match):
    with pytest.raises(ValueError, match=match):
        tiny_vrt()(torch.rand(shape))


def test_input_checks_pa4_frames_and_small_frames():
    with pytest.raises(ValueError, match="at least 3 frames .*pa_frames=4.* got T=2"):
        tiny_vrt(pa_frames=4)(frames(t=2))
    with pytest.raises(ValueError, match="larger than 32x32"):
        tiny_vrt(window_size=(2, 4, 4))(frames(h=32, w=32))


def test_required_multiple():
    assert tiny_vrt().required_multiple == (64, 64)
    assert required_multiple(tiny_vrt(window_size=(2, 4, 8))) == (32, 64)
    wrapper = nn.Sequential(nn.Identity(), tiny_vrt())
    assert required_multiple(wrapper) == (64, 64)
    with pytest.raises(ValueError, match="no VRT"):
        required_multiple(nn.Linear(1, 1))


def test_stage_hook_sees_and_replaces_stage_outputs():
    model = tiny_vrt().eval()
    x = frames()
    seen = []

    def identity(i, feat):
        seen.append((i, tuple(feat.shape)))
        return feat

    with torch.no_grad():
        plain = model(x)
        torch.testing.assert_close(model(x, stage_hook=identity), plain, rtol=0, atol=0)
        assert seen == [(i, (1, 8, 3, 64 >> min(i, 6 - i), 64 >> min(i, 6 - i))) for i in range(7)]
        for stage in (3, 6):  # an encoder stage (also a skip) and the last decoder stage
            changed = model(x, stage_hook=lambda i, f: f * 0 if i == stage else f)
            assert (changed - plain).abs().max() > 1e-4
        with pytest.raises(ValueError, match="after stage 2"):
            model(x, stage_hook=lambda i, f: f[:, :, :2] if i == 1 else f)


def test_activation_checkpointing_matches_plain_run():
    plain = tiny_vrt(drop_path_rate=0.1)
    ckpt = tiny_vrt(drop_path_rate=0.1, use_checkpoint_attn=True, use_checkpoint_ffn=True,
                    no_checkpoint_attn_blocks=[8])
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.stage1.residual_group2.blocks[0].use_checkpoint_attn
    assert not ckpt.stage8[2].residual_group.blocks[0].use_checkpoint_attn
    assert ckpt.stage8[2].residual_group.blocks[0].use_checkpoint_ffn
    results = []
    for model in (plain, ckpt):  # train mode: drop path draws from the RNG, which checkpointing must replay
        torch.manual_seed(7)
        out = model(frames())
        out.square().mean().backward()
        results.append((out, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=0)
    for g_ckpt, g_plain in zip(results[1][1], results[0][1]):
        torch.testing.assert_close(g_ckpt, g_plain, rtol=0, atol=0)


@pytest.mark.parametrize("overrides,t,out_hw", [
    (dict(pa_frames=4), 3, 64),
    (dict(upscale=2, window_size=(2, 4, 4)), 2, 128),
    (dict(nonblind_denoising=True), 2, 64),
])
def test_variant_shapes(overrides, t, out_hw):
    model = tiny_vrt(**overrides).eval()
    c = 4 if overrides.get("nonblind_denoising") else 3
    with torch.no_grad():
        assert model(frames(t=t, c=c)).shape == (1, t, 3, out_hw, out_hw)


def test_bfloat16_weights_run_close_to_float32():
    model = tiny_vrt().eval()
    x = frames()
    with torch.no_grad():
        ref = model(x)
        out = model.bfloat16()(x.bfloat16())
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().mean() < 0.05
