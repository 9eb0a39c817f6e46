"""``--init-weights``: weights only, from our single file, the guide's weights-only file, a weights export or an
official VRT release file (keyed ``params``); never unpickling code, strict about fit."""
from __future__ import annotations

import pytest
import torch

from ds_deblur.ckpt.weights import load_weights, read_weights
from ds_deblur.config import load_config
from ds_deblur.models import build_model
from ds_deblur.errors import CheckpointFormatError

TINY = load_config({"DATA": {"ROOT": "/unused"}}, ["MODEL.PRESET=tiny", "DATA.K=4"])


def fresh(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def trained() -> dict:
    return fresh(1).state_dict()


def test_the_guides_weights_only_file_loads(tmp_path, trained):
    path = tmp_path / "weights_only.pth"
    torch.save({"state_dict": trained}, path)  # the original guide's "只保存模型权重" snippet
    model = fresh(2)
    assert "single file" in load_weights(model, path)
    assert same(model.state_dict(), trained)


def test_official_vrt_params_load_into_the_backbone(tmp_path, trained):
    path = tmp_path / "vrt_release.pth"
    source = fresh(1)
    torch.save({"params": source.vrt.state_dict()}, path)
    model = fresh(2)
    spike_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("vrt.")}
    assert "official VRT" in load_weights(model, path)
    assert same(model.vrt.state_dict(), source.vrt.state_dict())
    assert same({k: v for k, v in model.state_dict().items() if not k.startswith("vrt.")}, spike_before)


def test_safetensors_export_loads(tmp_path, trained):
    from safetensors.torch import save_file
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in trained.items()}, str(path))
    model = fresh(2)
    assert load_weights(model, path) == "weights export"
    assert same(model.state_dict(), trained)


def test_weights_of_another_model_are_refused_naming_the_file(tmp_path, trained):
    path = tmp_path / "other.pth"
    torch.save({k: v for k, v in trained.items() if "spike" not in k}, path)
    with pytest.raises(CheckpointFormatError, match=r"other\.pth .*missing \d+ keys.*MODEL\.PRESET"):
        load_weights(fresh(2), path)
    with pytest.raises(Exception, match="Checkpoint not found"):
        load_weights(fresh(2), tmp_path / "nope.pth")


def test_ema_weights_are_chosen_as_the_run_validated_or_as_asked(tmp_path, trained):
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in trained.items()}
    path = tmp_path / "last.pth"
    for validated_with_ema in (True, False):
        torch.save({"step": 3, "state_dict": trained, "state_dict_ema": ema,
                    "config": {"LOG": {"VAL_USE_EMA": validated_with_ema}}}, path)
        auto = read_weights(path, ema=None)
        assert same(auto.state_dict, ema if validated_with_ema else trained)
        assert ("EMA" in auto.what) is validated_with_ema
        assert same(read_weights(path, ema=True).state_dict, ema)
        assert same(read_weights(path).state_dict, trained)  # the default (--init-weights): the trained weights
    torch.save({"step": 3, "state_dict": trained}, path)
    with pytest.raises(CheckpointFormatError, match="has no EMA weights"):
        read_weights(path, ema=True)
    torch.save(trained, tmp_path / "export.pth")
    with pytest.raises(CheckpointFormatError, match="holds one set of weights"):
        read_weights(tmp_path / "export.pth", ema=True)
