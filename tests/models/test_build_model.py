import pytest
import torch

from ds_deblur.config import MODEL_PRESETS, load_config
from ds_deblur.models import PRESETS, build_model

TINY_WIDTHS = [16, 16, 16, 16]
TINY_PARAMS = 1_863_827  # with K=32; SpyNet alone is 1,440,300


def _cfg(*overrides: str, preset: str = "tiny", k: int = 4, clip_len: int = 3):
    sets = [f"MODEL.PRESET={preset}", f"DATA.K={k}", f"DATA.CLIP_LEN={clip_len}"]
    return load_config({"DATA": {"ROOT": "unused"}}, overrides=sets + list(overrides))


def _inputs(b=1, t=3, k=4, size=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=gen), torch.randn(b, t, k, size, size, generator=gen)


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _moved_off_identity(model: torch.nn.Module) -> torch.nn.Module:
    """The tiny preset starts as the identity (zero last conv); give that conv weights, as one step would."""
    torch.nn.init.normal_(model.vrt.conv_last.weight, std=0.05)
    return model


def test_tiny_starts_as_the_identity():
    model = build_model(_cfg()).eval()
    blur, spike = _inputs()
    with torch.no_grad():
        assert torch.equal(model(blur, spike), blur)
    assert build_model(_cfg(preset="base")).vrt.conv_last.weight.abs().sum() > 0  # other presets: official init
    assert build_model(_cfg("MODEL.IDENTITY_INIT=false")).vrt.conv_last.weight.abs().sum() > 0


def test_tiny_forward_shape_and_spike_matters():
    torch.manual_seed(0)
    model = _moved_off_identity(build_model(_cfg()).eval())
    blur, spike = _inputs()
    with torch.no_grad():
        out = model(blur, spike)
        other = model(blur, spike + 1.0)
    assert out.shape == blur.shape
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, other)


def test_use_spike_false_is_plain_vrt_and_ignores_spike():
    torch.manual_seed(0)
    model = build_model(_cfg("MODEL.USE_SPIKE=false", "MODEL.CHANNELS_PER_SCALE=[96,96,96,96]")).eval()
    assert {name.split(".")[0] for name, _ in model.named_parameters()} == {"vrt"}
    blur, spike = _inputs()
    with torch.no_grad():
        out = model(blur, spike)
        torch.testing.assert_close(out, model(blur, torch.zeros_like(spike)))
        torch.testing.assert_close(out, model.vrt(blur))
    assert out.shape == blur.shape


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = _moved_off_identity(build_model(_cfg()).eval())  # eval: no stochastic depth (drops branches)
    blur, spike = _inputs(t=3)
    model(blur, spike).abs().mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()] == []
    dead = {n for n, p in model.named_parameters() if not p.grad.any()}
    # VRT starts each offset predictor's last conv at zero, which blocks the gradient to its first three convs
    # until that conv has moved; everything else must learn from the first step.
    blocked = {f"vrt.stage{s}.pa_deform.conv_offset.{i}.{w}" for s in range(1, 8) for i in (0, 2, 4)
               for w in ("weight", "bias")}
    assert dead == blocked


def test_same_seed_same_output():
    blur, spike = _inputs()
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        with torch.no_grad():
            outs.append(build_model(_cfg()).eval()(blur, spike))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_tiny_parameter_count():
    model = build_model(_cfg("DATA.K=32"))
    assert _n_params(model) == TINY_PARAMS


def test_base_parameter_count_matches_original_project():
    model = build_model(_cfg(preset="base", k=32, clip_len=5))
    spike = _n_params(model) - _n_params(model.vrt)
    assert spike == 5_411_712  # encoder 4,812,672 + temporal SA 299,136 + fusion 299,904
    assert round(_n_params(model) / 1e6, 2) == 23.68


def test_vrt_gopro_backbone_has_official_size():
    model = build_model(_cfg(preset="vrt_gopro", k=32))
    assert round(_n_params(model.vrt) / 1e6, 2) == 18.32
    assert _n_params(model) - _n_params(model.vrt) == 5_411_712


def test_channels_per_scale_mismatch_names_keys_and_values():
    with pytest.raises(ValueError) as err:
        build_model(_cfg("MODEL.CHANNELS_PER_SCALE=[96,96,96,96]"))
    message = str(err.value)
    assert "MODEL.CHANNELS_PER_SCALE=[96, 96, 96, 96]" in message
    assert "MODEL.VRT.EMBED_DIMS[:4]=[16, 16, 16, 16]" in message


def test_vrt_overrides_are_read():
    cfg = _cfg("MODEL.VRT.EMBED_DIMS=[8,8,8,8,8,8,8,12]", "MODEL.VRT.NUM_HEADS=[1,1,1,1,1,1,1,2]",
               "MODEL.VRT.DEPTHS=[1,1,1,1,1,1,1,1]", "MODEL.CHANNELS_PER_SCALE=[8,8,8,8]",
               "MODEL.SPIKE_TSA.HEADS=2", "MODEL.FUSE.CHUNK_PIXELS=7")
    model = build_model(cfg)
    assert model.vrt.conv_first.out_channels == 8
    assert model.spike_encoder.in_proj.out_channels == 8
    assert model.spike_temporal_sa.blocks[0].attn.heads == 2
    assert model.cross_attn_fuse[0].chunk_pixels == 7
    blur, spike = _inputs()
    assert model(blur, spike).shape == blur.shape


def test_checkpointing_and_spynet_path_reach_the_backbone(tmp_path):
    model = build_model(_cfg("MODEL.VRT.USE_CHECKPOINT_ATTN=true", "MODEL.VRT.USE_CHECKPOINT_FFN=true"))
    flags = [(m.use_checkpoint_attn, m.use_checkpoint_ffn) for m in model.vrt.modules()
             if hasattr(m, "use_checkpoint_attn")]
    assert flags and all(a and f for a, f in flags)
    missing = tmp_path / "spynet.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_model(_cfg(f"MODEL.VRT.SPYNET_PATH={missing}"))


def test_spike_shape_mismatch_is_an_error():
    model = build_model(_cfg())
    blur, spike = _inputs()
    with pytest.raises(ValueError, match="matching blur"):
        model(blur, spike[:, :2])


def test_spike_channels_default_to_the_preset_widths():
    model = build_model(_cfg())  # MODEL.CHANNELS_PER_SCALE null
    assert [m.out_channels for m in model.spike_encoder.modules() if isinstance(m, torch.nn.Conv3d)][0] == \
        TINY_WIDTHS[0]
    assert build_model(_cfg(f"MODEL.CHANNELS_PER_SCALE={TINY_WIDTHS}")).state_dict().keys() == \
        model.state_dict().keys()


def test_size_multiple_is_the_coarsest_window():
    assert build_model(_cfg()).size_multiple == 64  # window 8 at 1/8 scale


def test_the_schema_offers_exactly_the_presets_the_models_have():
    # MODEL.PRESET's limit is the only check of the name: build_model trusts a loaded config.
    assert tuple(PRESETS) == MODEL_PRESETS
