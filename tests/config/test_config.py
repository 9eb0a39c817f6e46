import warnings
from pathlib import Path

import pytest
import yaml

from ds_deblur.config import Config, ConfigError, canonical_dict, load_config, load_stored_config, save_config
from ds_deblur.config.legacy import EARLIER_KEYS, SPELLINGS
from ds_deblur.data.loader import prefetch_factor, workers_per_rank
from support.original_trainer import loaded_with_warnings, reference_raw

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"DATA": {"ROOT": "/data"}}


def test_defaults_fill_every_key():
    cfg = load_config(MINIMAL)
    assert cfg.DATA.CLIP_LEN == 5 and cfg.DATA.K == 32 and cfg.MODEL.PRESET == "base"
    assert cfg.TRAIN.OPTIM.BETAS == [0.9, 0.99] and cfg.LOG.SAVE_DIR == "outputs"


def test_baseline_yaml_has_the_original_settings():
    cfg = load_config(REPO / "ds_configs/vrt_spike_baseline.yaml")
    assert (cfg.DATA.CLIP_LEN, cfg.DATA.CROP_SIZE, cfg.DATA.K) == (5, 256, 32)
    assert cfg.MODEL.CHANNELS_PER_SCALE == [96] * 4
    assert load_config(MINIMAL).MODEL.CHANNELS_PER_SCALE is None  # the preset's widths
    assert cfg.MODEL.SPIKE_TSA.HEADS == 4 and cfg.MODEL.FUSE.HEADS == 4
    assert (cfg.TRAIN.BATCH_SIZE, cfg.TRAIN.GRADIENT_ACCUMULATION_STEPS) == (1, 6)
    optim, loss = cfg.TRAIN.OPTIM, cfg.LOSS
    assert optim.LR == 1e-4 and optim.BETAS == [0.9, 0.99] and optim.WEIGHT_DECAY == 1e-4
    assert cfg.TRAIN.SCHED.WARMUP_STEPS == 256 and cfg.TRAIN.MAX_GRAD_NORM == 1.0
    assert loss.CHARBONNIER.DELTA == 1e-3 and loss.VGG_PERCEPTUAL.WEIGHT == 0.1
    assert loss.VGG_PERCEPTUAL.LAYERS == ["relu3_3"] and cfg.LOG.VAL_EVERY_STEPS == 1000


def test_tiny_yaml_loads():
    assert load_config(REPO / "ds_configs/tiny_synth.yaml").MODEL.PRESET == "tiny"


def test_overrides_parse_yaml_values():
    cfg = load_config(MINIMAL, ["TRAIN.OPTIM.LR=2e-4", "MODEL.VRT.EMBED_DIMS=[8, 16]", "DATA.SPIKE_SIZE=null",
                                "MODEL.USE_SPIKE=false"])
    assert cfg.TRAIN.OPTIM.LR == 2e-4 and cfg.MODEL.VRT.EMBED_DIMS == [8, 16]
    assert cfg.DATA.SPIKE_SIZE is None and cfg.MODEL.USE_SPIKE is False


def test_yaml_float_without_dot_is_accepted(tmp_path):
    # PyYAML reads `1e-4` as a string; users write it that way.
    path = tmp_path / "c.yaml"
    path.write_text("DATA:\n  ROOT: /d\nTRAIN:\n  OPTIM:\n    LR: 1e-4\n")
    assert load_config(path).TRAIN.OPTIM.LR == 1e-4


@pytest.mark.parametrize("raw, overrides, needle", [
    ({"DATA": {"ROOT": "/d", "CLIP_LENN": 3}}, [], "DATA.CLIP_LENN; did you mean DATA.CLIP_LEN"),
    ({"DATA": {"ROOT": "/d"}, "TRAN": {}}, [], "did you mean TRAIN"),
    ({}, [], "DATA.ROOT is missing"),
    (MINIMAL, ["DATA.CROP_SIZE=100"], "DATA.CROP_SIZE must be a positive multiple of 8"),
    (MINIMAL, ["DATA.CLIP_LEN=1"], "DATA.CLIP_LEN must be >= 2"),
    (MINIMAL, ["TRAIN.OPTIM.LR=-1e-4"], "TRAIN.OPTIM.LR must be > 0"),
    (MINIMAL, ["TRAIN.BATCH_SIZE=2.5"], "TRAIN.BATCH_SIZE must be an integer"),
    (MINIMAL, ["TRAIN.OPTIM.LR=fast"], "TRAIN.OPTIM.LR must be a number"),
    (MINIMAL, ["MODEL.USE_SPIKE=3"], "MODEL.USE_SPIKE must be true or false"),
    (MINIMAL, ["MODEL.PRESET=huge"], "MODEL.PRESET must be one of tiny, base, vrt_gopro"),
    (MINIMAL, ["TRAIN.OPTIM.BETAS=[0.9]"], "TRAIN.OPTIM.BETAS must be 2 values"),
    (MINIMAL, ["TRAIN.OPTIM.BETAS=[0.9, 1.0]"], "TRAIN.OPTIM.BETAS entries must be in [0, 1), got [0.9, 1.0]"),
    (MINIMAL, ["LOSS.VGG_PERCEPTUAL.LAYERS=[relu9_9]"], "LOSS.VGG_PERCEPTUAL.LAYERS entries must be one of"),
    (MINIMAL, ["TRAIN.VAL_TILE_SIZE=64", "TRAIN.VAL_TILE_OVERLAP=64"], "TRAIN.VAL_TILE_OVERLAP must be in"),
    (MINIMAL, ["TRAIN.TOTAL_STEPS=null"], "TRAIN.TOTAL_STEPS and TRAIN.EPOCHS are both null"),
    (MINIMAL, ["MODEL.CHANNELS_PER_SCALE=[96, 96]"], "MODEL.CHANNELS_PER_SCALE must be 4"),
    (MINIMAL, ["TRAIN.OPTIM.LR"], "expected SECTION.KEY=VALUE"),
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
    cfg = load_config(MINIMAL, ["MODEL.PRESET=tiny", "TRAIN.OPTIM.LR=3e-4"])
    assert load_config(cfg.to_dict()) == cfg
    save_config(cfg, tmp_path / "config.yaml", deepspeed={"zero_optimization": {"stage": 2}})
    data = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert data["DEEPSPEED"]["zero_optimization"]["stage"] == 2
    assert load_config(tmp_path / "config.yaml") == cfg  # a run's config.yaml is a valid --config
    assert isinstance(load_config(cfg), Config)


# --- the original trainer's schema ---------------------------------------------------------------------------------

OLD_SCHEMA = REPO / "tests/support/config_before_original_schema.yaml"  # a stored config in the dropped spellings
# What loading the reference warns about: docs/original-trainer.md documents each of these keys.
REFERENCE_WARNED = {
    "TRAIN.COMPILE_MODEL", "DATA.USE_RAM_CACHE", "DATA.CACHE_SIZE_GB", "DATA.ALIGN_LOG_PATHS",
    *(f"MODEL.{part}.{key}" for part in ("SPIKE_TSA", "FUSE")
      for key in ("ADAPTIVE_CHUNK", "CHUNK_SIZE", "CHUNK_SHAPE")),
    *(f"LOG.{key}" for key in ("ENABLE_TIMING_LOG", "TIMING_CONSOLE", "TIMING_FILE", "TIMING_CONSOLE_INTERVAL",
                               "TIMING_FILE_INTERVAL")),
}


def test_reference_config_loads_with_the_originals_meaning():
    cfg, said = loaded_with_warnings(reference_raw())
    train, loss, log = cfg.TRAIN, cfg.LOSS, cfg.LOG
    assert cfg.SEED == 123 and (cfg.DATA.K, cfg.DATA.CLIP_LEN, cfg.DATA.CROP_SIZE) == (32, 5, 256)
    assert (cfg.DATA.NORM.MEAN, cfg.DATA.NORM.STD) == (0.0, 1.0) and cfg.DATA.USE_PRECOMPUTED_VOXELS
    assert (train.OPTIM.TYPE, train.OPTIM.LR, train.OPTIM.BETAS, train.OPTIM.WEIGHT_DECAY) == (
        "adamw", 1e-4, [0.9, 0.99], 1e-4)
    assert (train.SCHED.TYPE, train.SCHED.WARMUP_STEPS, train.SCHED.MIN_LR) == ("cosine", 256, 0.0)
    assert (train.MAX_GRAD_NORM, train.BATCH_SIZE, train.VAL_BATCH_SIZE, train.GRADIENT_ACCUMULATION_STEPS) == (
        1.0, 1, 1, 6)
    assert (train.EPOCHS, train.TOTAL_STEPS) == (20, None)  # the run lasts EPOCHS, as in the original
    assert (train.RESUME_FROM_CHECKPOINT, train.CHECKPOINT_PATH) == (False, None)
    assert (loss.CHARBONNIER.DELTA, loss.CHARBONNIER.WEIGHT) == (1e-3, 1.0)
    assert (loss.VGG_PERCEPTUAL.LAYERS, loss.VGG_PERCEPTUAL.WEIGHT) == (["relu3_3"], 0.1)
    assert (log.TENSORBOARD, log.SAVE_DIR, log.VAL_EVERY_STEPS) == (True, "outputs", 1000)
    assert log.SAVE_EVERY_STEPS == 1000  # a save at each validation, as the original
    assert cfg.MODEL.VRT_CFG == "third_party/VRT/options/deblur/vrt_base.yaml" and cfg.MODEL.LAYERS == 4
    assert cfg.MODEL.FUSE.TYPE == "TemporalCrossAttn" and cfg.MODEL.CHANNELS_PER_SCALE == [96] * 4
    assert cfg.MODEL.SPIKE_TSA.CHUNK_PIXELS == cfg.MODEL.FUSE.CHUNK_PIXELS == 49152  # MAX_BATCH_TOKENS
    assert cfg.MODEL.VRT.USE_CHECKPOINT_ATTN and cfg.MODEL.VRT.USE_CHECKPOINT_FFN
    loader = cfg.DATALOADER
    assert loader.TOTAL_WORKERS == "cpu*0.9" and workers_per_rank(loader, 4, cpu_count=16) == 3
    assert (prefetch_factor(loader, True), prefetch_factor(loader, False), loader.PERSISTENT_WORKERS) == (2, 2, False)
    assert (cfg.TEST.BATCH_SIZE, cfg.TEST.NUM_WORKERS) == (1, 2)
    warned = {key for text in said for key in REFERENCE_WARNED if key in text}
    assert warned == REFERENCE_WARNED and all("ignored" in text for text in said), said
    guide = (REPO / "docs/original-trainer.md").read_text()
    assert all(f"`{key}`" in guide for key in REFERENCE_WARNED)  # documented warnings only


def test_shipped_baseline_is_the_originals_file():
    assert reference_raw(REPO / "ds_configs/vrt_spike_baseline.yaml") == reference_raw()
    shipped, _ = loaded_with_warnings(REPO / "ds_configs/vrt_spike_baseline.yaml")
    assert shipped == loaded_with_warnings(reference_raw())[0]


@pytest.mark.parametrize("old", sorted(SPELLINGS))
def test_every_other_spelling_of_the_original_sets_its_canonical_key(old):
    spelling = SPELLINGS[old]
    raw = {"DATA": {"ROOT": "/d"}}
    _set(raw, old, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = load_config(raw)
        by_override = load_config(MINIMAL, [f"{old}=3"])
    assert _get(cfg, spelling.key) == 3 and _get(by_override, spelling.key) == 3
    assert bool(caught) == spelling.warn
    assert spelling.key in _flat_keys(cfg.to_dict()) and old not in _flat_keys(cfg.to_dict())


@pytest.mark.parametrize("old", sorted(EARLIER_KEYS))
def test_earlier_ds_deblur_names_are_unknown_keys_that_suggest_the_canonical_one(old):
    raw = {"DATA": {"ROOT": "/d"}}
    _set(raw, old, 1)
    for source, sets in ((raw, []), (MINIMAL, [f"{old}=1"])):
        with pytest.raises(ConfigError) as err:
            load_config(source, sets)
        assert f"unknown config key {old}; did you mean {EARLIER_KEYS[old]}?" in str(err.value)
    assert not hasattr(_get(load_config(MINIMAL), old.rsplit(".", 1)[0]), old.rsplit(".", 1)[1])


def test_both_spellings_must_agree():
    same = load_config({"DATA": {"ROOT": "/d", "K": 16, "NUM_VOXEL_BINS": 16}})
    assert same.DATA.K == 16
    with pytest.raises(ConfigError) as err:
        load_config({"DATA": {"ROOT": "/d", "K": 32, "NUM_VOXEL_BINS": 16}})
    assert "DATA.NUM_VOXEL_BINS = 16 and DATA.K = 32 are the same setting" in str(err.value)
    with pytest.raises(ConfigError, match=r"DATA.NUM_VOXEL_BINS = 8 and DATA.K = 16 are the same setting "
                                          r"\(DATA.NUM_VOXEL_BINS is read as DATA.K\)"):
        load_config(MINIMAL, ["DATA.NUM_VOXEL_BINS=8", "DATA.K=16"])


def test_an_override_replaces_either_spelling_of_the_file():
    cfg = load_config(reference_raw(), ["TRAIN.OPTIM.LR=3e-4", "DATA.K=4", "LOG.VAL_EVERY_STEPS=5"])
    assert (cfg.TRAIN.OPTIM.LR, cfg.DATA.K, cfg.LOG.VAL_EVERY_STEPS, cfg.LOG.SAVE_EVERY_STEPS) == (3e-4, 4, 5, 5)


def test_a_stored_config_of_the_earlier_schema_loads_into_the_same_settings():
    stored = yaml.safe_load(OLD_SCHEMA.read_text())
    cfg = load_stored_config(stored)
    assert (cfg.TRAIN.OPTIM.LR, cfg.TRAIN.SCHED.WARMUP_STEPS, cfg.TRAIN.SCHED.MIN_LR) == (2e-3, 1, 1e-5)
    assert (cfg.TRAIN.MAX_GRAD_NORM, cfg.LOG.VAL_EVERY_STEPS, cfg.LOG.SAVE_EVERY_STEPS) == (0.5, 2, 2)
    assert (cfg.DATA.NORM.MEAN, cfg.DATA.NORM.STD, cfg.DATALOADER.NUM_WORKERS) == (0.2, 0.4, 1)
    assert (cfg.LOSS.CHARBONNIER.DELTA, cfg.LOSS.VGG_PERCEPTUAL.LAYERS) == (1e-3, ["relu2_2"])
    assert canonical_dict(stored) == cfg.to_dict() and stored == yaml.safe_load(OLD_SCHEMA.read_text())
    # As a YAML file (--config) the dropped spellings are errors that name the canonical key.
    with pytest.raises(ConfigError, match="unknown config key DATA.SPIKE_MEAN; did you mean DATA.NORM.MEAN?"):
        load_config(OLD_SCHEMA)


def test_config_yaml_is_written_in_the_original_spelling(tmp_path):
    cfg = load_stored_config(yaml.safe_load(OLD_SCHEMA.read_text()))
    save_config(cfg, tmp_path / "config.yaml")
    written = yaml.safe_load((tmp_path / "config.yaml").read_text())
    keys = _flat_keys(written)
    assert {"TRAIN.OPTIM.LR", "TRAIN.SCHED.WARMUP_STEPS", "TRAIN.MAX_GRAD_NORM", "LOSS.CHARBONNIER.DELTA",
            "LOSS.VGG_PERCEPTUAL.LAYERS", "LOG.VAL_EVERY_STEPS", "DATA.NORM.MEAN"} <= keys
    assert not keys & set(EARLIER_KEYS)
    assert load_config(tmp_path / "config.yaml") == cfg


def test_save_every_follows_val_every_unless_set():
    assert load_config(MINIMAL, ["LOG.VAL_EVERY_STEPS=7"]).LOG.SAVE_EVERY_STEPS == 7
    assert load_config(MINIMAL, ["LOG.VAL_EVERY_STEPS=7", "LOG.SAVE_EVERY_STEPS=3"]).LOG.SAVE_EVERY_STEPS == 3


def test_worker_keys_give_one_count():
    with pytest.raises(ConfigError, match="DATALOADER.NUM_WORKERS = 1 and DATALOADER.TOTAL_WORKERS = 'auto' both"):
        load_config(MINIMAL, ["DATALOADER.NUM_WORKERS=1", "DATALOADER.TOTAL_WORKERS=auto"])
    with pytest.raises(ConfigError, match="DATALOADER.TOTAL_WORKERS must be a number, 'auto'"):
        load_config(MINIMAL, ["DATALOADER.TOTAL_WORKERS=many"])
    with pytest.raises(ConfigError, match="DATALOADER.TOTAL_WORKERS must be >= 0, got -1"):
        load_config(MINIMAL, ["DATALOADER.TOTAL_WORKERS=-1"])


@pytest.mark.parametrize("overrides, needle", [
    (["MODEL.LAYERS=3"], "MODEL.LAYERS must be 4, got 3 (the spike branch is fused after VRT encoder stages 1-4"),
    (["MODEL.FUSE.TYPE=Concat"], "MODEL.FUSE.TYPE must be TemporalCrossAttn"),
    (["TRAIN.OPTIM.TYPE=sgd"], "TRAIN.OPTIM.TYPE must be one of adamw, adamw8bit"),
    (["TRAIN.SCHED.TYPE=step"], "TRAIN.SCHED.TYPE must be cosine, got 'step'"),
    (["LOSS.VGG_PERCEPTUAL.LAYERS=[]"], "LOSS.VGG_PERCEPTUAL.LAYERS must list at least one VGG16 layer"),
    (["DATA.NUM_VOXEL_BINS=0"], "DATA.NUM_VOXEL_BINS must be >= 1, got 0 (DATA.NUM_VOXEL_BINS is read as DATA.K)"),
    (["TRAIN.OPTIM.LRR=1"], "unknown config key TRAIN.OPTIM.LRR; did you mean TRAIN.OPTIM.LR?"),
    (["TRAIN.LRATE=1"], "unknown config key TRAIN.LRATE; did you mean TRAIN.OPTIM.LR?"),
    (["TRAIN.WARMUP_STEP=1"], "unknown config key TRAIN.WARMUP_STEP; did you mean TRAIN.SCHED.WARMUP_STEPS?"),
])
def test_original_keys_are_checked(overrides, needle):
    with pytest.raises(ConfigError) as err:
        load_config(MINIMAL, overrides)
    assert needle in str(err.value)


def test_val_batch_size_other_than_one_warns():
    with pytest.warns(UserWarning, match="TRAIN.VAL_BATCH_SIZE = 2 is not used"):
        load_config(MINIMAL, ["TRAIN.VAL_BATCH_SIZE=2"])


def _set(raw: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        raw = raw.setdefault(part, {})
    raw[leaf] = value


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _flat_keys(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys |= _flat_keys(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_readme_points_to_the_reference():
    assert "docs/config.md" in (REPO / "README.md").read_text()
