import warnings
from pathlib import Path

import pytest
import yaml

from ds_deblur.config import Config, ConfigError, describe, load_config, save_config

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"DATA": {"ROOT": "/data"}}


def test_defaults_fill_every_key():
    cfg = load_config(MINIMAL)
    assert cfg.DATA.CLIP_LEN == 5 and cfg.DATA.K == 32 and cfg.MODEL.PRESET == "base"
    assert cfg.TRAIN.BETAS == [0.9, 0.99] and cfg.LOG.SAVE_DIR == "outputs"
    # every key documented
    assert all("#" in line and line.split("#", 1)[1].strip() for line in describe())


def test_baseline_yaml_has_the_original_settings():
    cfg = load_config(REPO / "ds_configs/vrt_spike_baseline.yaml")
    assert (cfg.DATA.CLIP_LEN, cfg.DATA.CROP_SIZE, cfg.DATA.K) == (5, 256, 32)
    assert cfg.MODEL.CHANNELS_PER_SCALE == [96] * 4
    assert load_config(MINIMAL).MODEL.CHANNELS_PER_SCALE is None  # the preset's widths
    assert cfg.MODEL.SPIKE_TSA.HEADS == 4 and cfg.MODEL.FUSE.HEADS == 4
    assert (cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS) == (1, 6)
    assert cfg.TRAIN.LR == 1e-4 and cfg.TRAIN.BETAS == [0.9, 0.99] and cfg.TRAIN.WEIGHT_DECAY == 1e-4
    assert cfg.TRAIN.WARMUP_STEPS == 256 and cfg.TRAIN.CLIP_GRAD_NORM == 1.0
    assert cfg.LOSS.CHARBONNIER_DELTA == 1e-3 and cfg.LOSS.VGG_WEIGHT == 0.1 and cfg.LOSS.VGG_LAYER == "relu3_3"
    assert cfg.TRAIN.VAL_EVERY_STEPS == 1000


def test_tiny_yaml_loads():
    assert load_config(REPO / "ds_configs/tiny_synth.yaml").MODEL.PRESET == "tiny"


def test_overrides_parse_yaml_values():
    cfg = load_config(MINIMAL, ["TRAIN.LR=2e-4", "MODEL.VRT.EMBED_DIMS=[8, 16]", "DATA.SPIKE_SIZE=null",
                                "MODEL.USE_SPIKE=false"])
    assert cfg.TRAIN.LR == 2e-4 and cfg.MODEL.VRT.EMBED_DIMS == [8, 16]
    assert cfg.DATA.SPIKE_SIZE is None and cfg.MODEL.USE_SPIKE is False


def test_yaml_float_without_dot_is_accepted(tmp_path):
    # PyYAML reads `1e-4` as a string; users write it that way.
    path = tmp_path / "c.yaml"
    path.write_text("DATA:\n  ROOT: /d\nTRAIN:\n  LR: 1e-4\n")
    assert load_config(path).TRAIN.LR == 1e-4


@pytest.mark.parametrize("raw, overrides, needle", [
    ({"DATA": {"ROOT": "/d", "CLIP_LENN": 3}}, [], "DATA.CLIP_LENN; did you mean DATA.CLIP_LEN"),
    ({"DATA": {"ROOT": "/d"}, "TRAN": {}}, [], "did you mean TRAIN"),
    ({}, [], "DATA.ROOT is missing"),
    (MINIMAL, ["DATA.CROP_SIZE=100"], "DATA.CROP_SIZE must be a positive multiple of 8"),
    (MINIMAL, ["DATA.CLIP_LEN=1"], "DATA.CLIP_LEN must be >= 2"),
    (MINIMAL, ["TRAIN.LR=-1e-4"], "TRAIN.LR must be > 0"),
    (MINIMAL, ["TRAIN.BATCH_SIZE=2.5"], "TRAIN.BATCH_SIZE must be an integer"),
    (MINIMAL, ["TRAIN.LR=fast"], "TRAIN.LR must be a number"),
    (MINIMAL, ["MODEL.USE_SPIKE=3"], "MODEL.USE_SPIKE must be true or false"),
    (MINIMAL, ["MODEL.PRESET=huge"], "MODEL.PRESET must be one of tiny, base, vrt_gopro"),
    (MINIMAL, ["TRAIN.BETAS=[0.9]"], "TRAIN.BETAS must be two numbers"),
    (MINIMAL, ["LOSS.VGG_LAYER=relu9_9"], "LOSS.VGG_LAYER must be one of"),
    (MINIMAL, ["TRAIN.VAL_TILE_SIZE=64", "TRAIN.VAL_TILE_OVERLAP=64"], "TRAIN.VAL_TILE_OVERLAP must be in"),
    (MINIMAL, ["TRAIN.TOTAL_STEPS=null"], "TRAIN.TOTAL_STEPS and TRAIN.EPOCHS are both null"),
    (MINIMAL, ["MODEL.CHANNELS_PER_SCALE=[96, 96]"], "MODEL.CHANNELS_PER_SCALE must be 4"),
    (MINIMAL, ["TRAIN.LR"], "expected SECTION.KEY=VALUE"),
    (MINIMAL, ["DATA=3"], "DATA must be a mapping"),
])
def test_bad_values_name_the_key(raw, overrides, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(raw, overrides)
    assert needle in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="Config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("DATA: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(listy)


def test_legacy_keys_warn_and_renamed_key_applies():
    raw = {"DATA": {"ROOT": "/d", "USE_RAM_CACHE": True},
           "TRAIN": {"AMP_ENABLED": True, "ACCUMULATE_GRAD": 4}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(raw)
    text = " ".join(str(w.message) for w in caught)
    assert "TRAIN.AMP_ENABLED is ignored under DeepSpeed" in text
    assert "DATA.USE_RAM_CACHE is ignored" in text
    assert "TRAIN.ACCUMULATE_GRAD is renamed TRAIN.GRADIENT_ACCUMULATION_STEPS" in text
    assert cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS == 4


def test_round_trip_through_dict_and_yaml(tmp_path):
    cfg = load_config(MINIMAL, ["MODEL.PRESET=tiny", "TRAIN.LR=3e-4"])
    assert load_config(cfg.to_dict()) == cfg
    save_config(cfg, tmp_path / "config.yaml", deepspeed={"zero_optimization": {"stage": 2}})
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert data["DEEPSPEED"]["zero_optimization"]["stage"] == 2
    assert load_config(tmp_path / "config.yaml") == cfg  # a run's config.yaml is a valid --config
    assert isinstance(load_config(cfg), Config)
