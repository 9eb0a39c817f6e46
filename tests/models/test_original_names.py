"""The original S-VRT model's parameter names: its checkpoints load strict, ours load into its model."""
import json
import warnings
from pathlib import Path

import pytest

from ds_deblur.config import ConfigError, load_config
from ds_deblur.models import build_model, rename_legacy_keys
from support.original_trainer import REFERENCE_STATE_DICT, reference_raw

LEGACY_KEYS = Path(__file__).with_name("spike_keys_before_original_names.txt")
TINY = {"DATA": {"ROOT": "unused", "CLIP_LEN": 2, "CROP_SIZE": 64, "K": 4}, "MODEL": {"PRESET": "tiny"}}


def test_baseline_state_dict_is_the_originals_key_for_key():
    reference = json.loads(REFERENCE_STATE_DICT.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference's ignored keys and its missing VRT_CFG file
        model = build_model(load_config(reference_raw()))
    ours = [(key, list(value.shape)) for key, value in model.state_dict().items()]
    assert ours == list(reference["state_dict"].items())  # names, shapes and order: all 1,802
    assert sum(p.numel() for p in model.parameters()) == reference["num_parameters"]
    params = [name for name, _ in model.named_parameters()]
    assert params == [key for key in reference["state_dict"] if key in set(params)]  # optimizer state order


def test_our_earlier_names_map_onto_todays_in_order():
    legacy = [line for line in LEGACY_KEYS.read_text().splitlines() if line and not line.startswith("#")]
    model = build_model(load_config(TINY))
    today = [key for key in model.state_dict() if not key.startswith("vrt.")]
    assert len(legacy) == len(today) == 128
    assert list(rename_legacy_keys({key: None for key in legacy})) == today
    assert rename_legacy_keys({"vrt.conv_first.weight": 1}) == {"vrt.conv_first.weight": 1}  # others unchanged


def test_fuse_blocks_are_indexable_like_the_list_they_were():
    model = build_model(load_config(TINY))
    assert len(model.cross_attn_fuse) == 4 and model.cross_attn_fuse[2] is model.cross_attn_fuse.fuse_blocks[2]


def test_vrt_cfg_gives_img_size_and_window(tmp_path):
    options = tmp_path / "vrt.yaml"
    options.write_text("netG:\n  net_type: vrt\n  img_size: [2, 64, 64]\n  window_size: [2, 4, 4]\n")
    model = build_model(load_config(TINY, [f"MODEL.VRT_CFG={options}"]))
    assert model.vrt.window_size == (2, 4, 4)
    wins = build_model(load_config(TINY, [f"MODEL.VRT_CFG={options}", "MODEL.VRT.WINDOW_SIZE=[2,8,8]"]))
    assert wins.vrt.window_size == (2, 8, 8)  # MODEL.VRT.* overrides win over the options file
    missing = tmp_path / "nope.yaml"
    with pytest.warns(UserWarning, match=f"MODEL.VRT_CFG {missing} not found"):
        assert build_model(load_config(TINY, [f"MODEL.VRT_CFG={missing}"])).vrt.window_size == (2, 8, 8)
    options.write_text("netG:\n  window_size: [2, 4]\n")
    with pytest.raises(ConfigError, match=r"netG.window_size must be \[T, H, W\]"):
        build_model(load_config(TINY, [f"MODEL.VRT_CFG={options}"]))

