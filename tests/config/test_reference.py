"""docs/config.md is what the schema generates; every declared limit is enforced by the one loop of
``ds_deblur.config.checks``; the rules between keys fire; ``ds-deblur config`` writes and checks the reference."""
from pathlib import Path

import pytest

from ds_deblur.config import ConfigError, load_config
from ds_deblur.config.reference import main, render
from ds_deblur.config.schema import walk

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "config.md"
MINIMAL = {"DATA": {"ROOT": "/d"}}


def test_docs_config_md_is_what_the_schema_generates():
    assert DOCS.read_text() == render(), "docs/config.md is out of date: run `ds-deblur config --write docs/config.md`"


def test_every_key_is_in_the_reference_with_its_doc():
    text = render()
    for name, f, _ in walk():
        assert f"| `{name}` |" in text and f.metadata["doc"], name


@pytest.mark.parametrize("override, message", [
    ("SEED=-1", "SEED must be >= 0, got -1"),
    ("DATA.K=0", "DATA.K must be >= 1, got 0"),
    ("DATA.NORM.STD=0", "DATA.NORM.STD must be > 0, got 0.0"),
    ("TRAIN.EMA_DECAY=-0.5", "TRAIN.EMA_DECAY must be in [0, 1), got -0.5"),
    ("TRAIN.VAL_TILE_SIZE=36", "TRAIN.VAL_TILE_SIZE must be a positive multiple of 8, got 36"),
    ("MODEL.PRESET=Tiny", "MODEL.PRESET must be one of tiny, base, vrt_gopro, got 'Tiny'"),
    ("MODEL.VRT.WINDOW_SIZE=[2, 8]", "MODEL.VRT.WINDOW_SIZE must be 3 values, got [2, 8] ([T, H, W])"),
    ("MODEL.VRT.DEPTHS=[2, 0]", "MODEL.VRT.DEPTHS entries must be >= 1, got [2, 0]"),
    ("LOG.SAVE_DIR=''", "LOG.SAVE_DIR must not be empty"),
    ("DATA.ROOT=''", "DATA.ROOT is missing: set it in the YAML or with --set DATA.ROOT=VALUE"),
])
def test_a_declared_limit_is_enforced(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(MINIMAL, [override])
    assert str(err.value).startswith(message)


def test_limits_skip_null_and_case_folds_where_declared():
    cfg = load_config(MINIMAL, ["DATA.NORM.STD=null", "TRAIN.OPTIM.TYPE=AdamW"])
    assert cfg.DATA.NORM.STD is None and cfg.TRAIN.OPTIM.TYPE == "AdamW"


@pytest.mark.parametrize("overrides, message", [
    (["TRAIN.OPTIM.LR=1e-4", "TRAIN.SCHED.MIN_LR=1e-3"], "TRAIN.SCHED.MIN_LR must be in [0, TRAIN.OPTIM.LR=0.0001]"),
    (["DATA.SPIKE_DIR=spike_vox"], "DATA.SPIKE_DIR must be a folder name other than DATA.VOXEL_CACHE_DIRNAME"),
    (["DATA.IMAGE_EXTS=[png]"], "DATA.IMAGE_EXTS must list extensions with their dot"),
])
def test_a_rule_between_keys_fires(overrides, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(MINIMAL, overrides)
    assert str(err.value).startswith(message)


def test_cli_prints_writes_and_checks(tmp_path, capsys):
    assert main([]) == 0 and capsys.readouterr().out == render()
    target = tmp_path / "docs" / "config.md"
    assert main(["--write", str(target)]) == 0 and target.read_text() == render()
    assert main(["--check", str(target)]) == 0
    target.write_text(render().replace("| `SEED` |", "| `SEEDS` |"))
    capsys.readouterr()
    assert main(["--check", str(target)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(["--check", str(tmp_path / "missing.md")]) == 1
    assert "ds-deblur config --write" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        main(["--write", "a.md", "--check", "b.md"])
    assert bad.value.code == 2
