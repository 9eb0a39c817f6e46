"""``--init-weights``: weights only, from our single file, the guide's weights-only file, a weights export or an
official VRT release file (keyed ``params``); never unpickling code, strict about fit. The original trainer's
files of a compiled (``_orig_mod.``) or DDP-wrapped (``module.``) model read like plain ones on every load path."""
from __future__ import annotations

from argparse import Namespace

import pytest
import torch

from ds_deblur.ckpt.cli import inspect_main
from ds_deblur.ckpt.manager import CheckpointManager, CheckpointOptions
from ds_deblur.ckpt.single_file import load_single_file
from ds_deblur.ckpt.weights import load_weights, read_weights
from ds_deblur.config import load_config
from ds_deblur.errors import CheckpointFormatError
from ds_deblur.models import build_model

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
    assert "single file" in load_weights(model, path)[0]
    assert same(model.state_dict(), trained)


def test_official_vrt_params_load_into_the_backbone(tmp_path, trained):
    path = tmp_path / "vrt_release.pth"
    source = fresh(1)
    torch.save({"params": source.vrt.state_dict()}, path)
    model = fresh(2)
    spike_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("vrt.")}
    assert "official VRT" in load_weights(model, path)[0]
    assert same(model.vrt.state_dict(), source.vrt.state_dict())
    assert same({k: v for k, v in model.state_dict().items() if not k.startswith("vrt.")}, spike_before)


def test_safetensors_export_loads(tmp_path, trained):
    from safetensors.torch import save_file
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in trained.items()}, str(path))
    model = fresh(2)
    assert load_weights(model, path) == ("weights export", None)
    assert same(model.state_dict(), trained)


def test_weights_of_another_model_are_refused_naming_the_file(tmp_path, trained):
    path = tmp_path / "other.pth"
    torch.save({k: v for k, v in trained.items() if "spike" not in k}, path)
    with pytest.raises(CheckpointFormatError, match=r"other\.pth .*missing \d+ keys.*MODEL\.PRESET"):
        load_weights(fresh(2), path)
    with pytest.raises(Exception, match="Checkpoint not found"):
        load_weights(fresh(2), tmp_path / "nope.pth")


def test_partial_load_copies_matching_names_and_shapes_and_reports_the_rest(tmp_path, trained):
    donor = {k: v for k, v in trained.items() if "spike" not in k}  # the spike branch missing
    wide = "vrt.conv_first.weight"
    donor[wide] = torch.zeros(*trained[wide].shape[:-1], trained[wide].shape[-1] + 2)  # another shape
    donor["extra.weight"] = torch.ones(3)  # a key this model lacks
    path = tmp_path / "donor.pth"
    torch.save(donor, path)
    model = fresh(2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    what, report = load_weights(model, path, partial=True)
    assert what == "weights export"
    state = model.state_dict()
    for key in state:  # loaded where name and shape fit, untouched elsewhere
        expected = trained[key] if key in donor and key != wide else before[key]
        assert torch.equal(state[key], expected), key
    missing = [k for k in state if k not in donor]
    lines = {line[2:28].strip(): line[28:].replace(",", "").split() for line in report.splitlines()[1:]}
    assert lines["loaded"][0] == str(len(donor) - 2)
    assert lines["skipped for shape"][:2] == ["1", wide]
    assert lines["missing (as initialised)"][0] == str(len(missing)) and missing
    assert lines["unexpected (ignored)"][:2] == ["1", "extra.weight"]
    assert str(path) in report.splitlines()[0]
    with pytest.raises(CheckpointFormatError, match="no tensor of the same name and shape"):
        torch.save({"other": torch.ones(1)}, tmp_path / "unrelated.pth")
        load_weights(fresh(2), tmp_path / "unrelated.pth", partial=True)
    with pytest.raises(CheckpointFormatError, match="donor.pth .*does not fit"):  # strict stays the default
        load_weights(fresh(2), path)


def test_a_new_run_loads_partially_when_the_config_says_so(tmp_path, trained):
    path = tmp_path / "donor.pth"
    torch.save({k: v for k, v in trained.items() if "spike" not in k}, path)
    args = Namespace(resume=None, init_weights=str(path), reset_optimizer=False)
    said: list[str] = []
    partial = load_config(TINY, ["MODEL.INIT_PARTIAL=true"])
    manager = CheckpointManager(CheckpointOptions(tmp_path / "ckpts", 1, 1, False), partial, None, 1, "fp32",
                                said.append)
    model = fresh(2)
    manager.prepare(args, model, {})
    assert same(model.vrt.state_dict(), {k[4:]: v for k, v in trained.items() if k.startswith("vrt.")})
    assert said[-1].startswith(f"[train] partial load of {path}") and "missing (as initialised)" in said[-1]
    strict = CheckpointManager(CheckpointOptions(tmp_path / "ckpts", 1, 1, False), TINY, None, 1, "fp32", print)
    with pytest.raises(CheckpointFormatError, match="missing"):
        strict.prepare(args, fresh(2), {})


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


# --- the original trainer's files of a compiled / DDP-wrapped model ----------------------------------------------

# Wrapper prefixes as saved, outermost first.
PREFIXES = [("_orig_mod.",), ("module.",), ("module.", "_orig_mod."), ("_orig_mod.", "module.")]
WRAPPERS = {"_orig_mod.": "torch.compile's", "module.": "DistributedDataParallel's"}


@pytest.fixture(scope="module")
def original_best(tmp_path_factory) -> dict:
    """A best.pth of the original trainer's layout (step, epoch, best_psnr, state_dict, AdamW over
    model.parameters() after one step, a scheduler and a GradScaler state) with unwrapped keys."""
    model = fresh(1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum(p.square().sum() for p in model.parameters()).backward()
    optimizer.step()
    return {"step": 1, "epoch": 0, "best_psnr": 25.5, "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": {"last_epoch": 1, "_last_lr": [1e-3]},
            "scaler": {"scale": 4096.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 1}}


def saved_with_prefix(ckpt: dict, prefixes: tuple[str, ...], path) -> object:
    """``ckpt`` as the original trainer saves a wrapped module (its state_dict keys carry ``prefixes``)."""
    torch.save({**ckpt, "state_dict": {"".join(prefixes) + k: v for k, v in ckpt["state_dict"].items()}}, path)
    return path


def stripped_line(path, prefixes: tuple[str, ...], count: int) -> str:
    carried = " and ".join(f"{WRAPPERS[p]} '{p}' prefix ({count} keys)" for p in prefixes)
    return f"[ckpt] {path}: keys carried {carried}; stripped"


@pytest.mark.parametrize("prefixes", PREFIXES)
@pytest.mark.parametrize("name, keys", [("best.pth", None), ("last.pth", ("step", "state_dict"))])
def test_a_wrapped_models_original_file_loads_like_the_plain_one(original_best, tmp_path, capsys, prefixes, name,
                                                                   keys):
    original = {k: v for k, v in original_best.items() if keys is None or k in keys}
    plain = tmp_path / "plain.pth"
    torch.save(original, plain)
    wrapped = saved_with_prefix(original, prefixes, tmp_path / name)
    want = load_single_file(plain)
    capsys.readouterr()
    got = load_single_file(wrapped)  # --resume FILE.pth
    assert capsys.readouterr().out.splitlines() == [stripped_line(wrapped, prefixes, len(want["state_dict"]))]
    assert list(got["state_dict"]) == list(want["state_dict"]) and same(got["state_dict"], want["state_dict"])
    # Adam's state is numbered by position in model.parameters(), which a wrapper leaves in the same order.
    assert got["optimizer"] is want["optimizer"] is None or \
        torch.equal(got["optimizer"]["state"][0]["exp_avg"], want["optimizer"]["state"][0]["exp_avg"])
    model = fresh(2)
    assert "single file (step 1)" in load_weights(model, wrapped)[0]  # --init-weights
    assert same(model.state_dict(), original["state_dict"])
    assert same(read_weights(wrapped).state_dict, original["state_dict"])  # ds-deblur infer --ckpt


def test_resume_puts_a_compiled_models_weights_into_the_model(original_best, tmp_path):
    path = saved_with_prefix(original_best, ("_orig_mod.",), tmp_path / "best.pth")
    said: list[str] = []
    manager = CheckpointManager(CheckpointOptions(tmp_path / "ckpts", 1, 1, False), TINY, None, 1, "fp32",
                                said.append)
    model = fresh(2)
    manager.prepare(Namespace(resume=str(path), init_weights=None, reset_optimizer=False), model, {})
    assert same(model.state_dict(), original_best["state_dict"])
    assert any("A checkpoint of the original S-VRT trainer" in line for line in said)


def test_inspect_reads_a_compiled_models_original_file(original_best, tmp_path, capsys):
    path = saved_with_prefix(original_best, ("_orig_mod.",), tmp_path / "best.pth")
    assert inspect_main([str(path)]) == 0
    out, err = capsys.readouterr()
    assert "written by the original S-VRT trainer" in out and "step 1  epoch 0  best PSNR 25.5000" in out
    assert f"state_dict        {len(original_best['state_dict'])} tensors" in out
    assert "GradScaler, scale 4096.0" in out
    assert stripped_line(path, ("_orig_mod.",), len(original_best["state_dict"])) in err  # stdout is the report's
