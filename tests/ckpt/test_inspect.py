"""``ds-deblur inspect`` on a checkpoint directory, a tag and single files (tags from tests/support/tag_factory.py)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ds_deblur.ckpt.cli import inspect_main as main
from ds_deblur.ckpt.export import export_tag
from support.tag_factory import REPO, Toy, reference

NUMEL = sum(t.numel() for t in Toy().state_dict().values())


def run_inspect(capsys, *argv: str) -> str:
    assert main(list(argv)) == 0
    return capsys.readouterr().out


@pytest.fixture
def run_dir(tags, tmp_path) -> Path:  # noqa: F811
    """A checkpoint dir with two complete tags, an unfinished save, ``latest`` and a last.pth."""
    ckpts = tmp_path / "ckpts"
    for name in ("z2_w2", "z3_w2"):
        shutil.copytree(tags / "ckpts" / name, ckpts / name)
    shutil.copytree(tags / "ckpts" / "z2_w2", ckpts / "step_000009")
    (ckpts / "step_000009" / "COMMIT.json").unlink()
    (ckpts / "latest").write_text("z2_w2")
    export_tag(ckpts, None, ckpts / "last.pth")
    return ckpts


@pytest.mark.dist
@pytest.mark.slow
def test_dir_lists_every_tag_and_describes_the_latest(run_dir, capsys):
    text = run_inspect(capsys, str(run_dir))
    assert "latest -> z2_w2" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("    ")}
    assert lines["z2_w2"].endswith("complete") and "step 3" in lines["z2_w2"]
    assert lines["z3_w2"].endswith("complete")
    assert "INCOMPLETE: no COMMIT.json (the save did not finish)" in lines["step_000009"]
    assert "single files: last.pth" in text
    assert "Tag z2_w2" in text and "step 3  epoch 1  best PSNR 27.5000 (step 2)" in text
    assert "world size 2  ZeRO stage 2  precision fp32" in text

    info = json.loads(run_inspect(capsys, str(run_dir), "--json"))
    assert info["kind"] == "dir" and info["latest"] == "z2_w2"
    assert {t["name"]: t["complete"] for t in info["tags"]} == {"step_000009": False, "z2_w2": True, "z3_w2": True}
    latest = info["latest_tag"]
    assert (latest["step"], latest["epoch"], latest["best_psnr"], latest["world_size"], latest["zero_stage"]) == \
        (3, 1, 27.5, 2, 2)
    assert [f["name"] for f in info["single_files"]] == ["last.pth"]


@pytest.mark.dist
@pytest.mark.slow
def test_fp16_tag_shows_files_scheduler_and_loss_scaler(tags, capsys):  # noqa: F811
    tag = tags / "ckpts" / "z2_w2_fp16"
    text = run_inspect(capsys, str(tag))
    assert "precision fp16" in text and "step 8  epoch 1" in text
    assert "optimizer states  2 file(s)" in text and "rng               2 file(s)" in text
    assert "loss scaler       scale 65536.0" in text
    info = json.loads(run_inspect(capsys, str(tag), "--json"))
    ref = reference(tags, "z2_w2_fp16")["at_save"]
    assert info["kind"] == "tag" and info["complete"] is True and info["precision"] == "fp16"
    assert info["contains"]["scaler"]["cur_scale"] == ref["loss_scaler"]["cur_scale"]
    assert info["contains"]["scheduler"]["last_epoch"] == ref["adam_steps"]
    assert info["contains"]["rng"] == ["rng_rank0.pt", "rng_rank1.pt"]
    assert info["contains"]["commit"] == ["COMMIT.json"]
    assert info["bytes"] == sum(p.stat().st_size for p in tag.iterdir())


@pytest.mark.dist
@pytest.mark.slow
def test_zero3_tag_has_one_model_states_file_per_rank(tags, capsys):  # noqa: F811
    info = json.loads(run_inspect(capsys, str(tags / "ckpts" / "z3_w1"), "--json"))
    assert (info["world_size"], info["zero_stage"]) == (1, 3)
    assert info["contains"]["model_states"] == ["zero_pp_rank_0_mp_rank_00_model_states.pt"]
    assert info["contains"]["scaler"] is None


@pytest.mark.dist
@pytest.mark.slow
def test_single_file_and_the_original_guide_snippet(run_dir, capsys):
    path = run_dir / "last.pth"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # the guide's "查看检查点信息", made safe
    print(f"Step: {ckpt['step']}")
    print(f"Epoch: {ckpt['epoch']}")
    print(f"Best PSNR: {ckpt['best_psnr']:.4f}")
    print(f"Contains optimizer: {'optimizer' in ckpt}")
    print(f"Contains scheduler: {'scheduler' in ckpt}")
    assert capsys.readouterr().out.splitlines() == [
        "Step: 3", "Epoch: 1", "Best PSNR: 27.5000", "Contains optimizer: True", "Contains scheduler: True"]

    text = run_inspect(capsys, str(path))
    assert "Single-file checkpoint" in text and "step 3  epoch 1  best PSNR 27.5000 (step 2)" in text
    assert "from tag z2_w2" in text and f"6 tensors, {NUMEL} values" in text
    assert "AdamW, state for 4 parameters" in text and "scaler            -" in text
    info = json.loads(run_inspect(capsys, str(path), "--json"))
    assert (info["kind"], info["step"], info["source_tag"], info["world_size"]) == ("single_file", 3, "z2_w2", 2)
    assert info["contains"]["optimizer"]["moments"]["numel"] == 2 * (NUMEL - 3 - 5)  # minus the buffers


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.dist
@pytest.mark.slow
def test_weights_exports(tags, tmp_path, capsys, suffix):  # noqa: F811
    path = export_tag(tags / "ckpts", "z3_w2", tmp_path / f"model{suffix}", weights_only=True)
    info = json.loads(run_inspect(capsys, str(path), "--json"))
    assert info["kind"] == "weights" and info["state_dict"]["count"] == 6 and info["state_dict"]["numel"] == NUMEL
    assert "no optimizer" in run_inspect(capsys, str(path))


@pytest.mark.dist
@pytest.mark.slow
def test_json_on_stdout_is_pure_json_when_run_as_a_module(tags):  # noqa: F811
    # DeepSpeed logs to stdout when first imported (unpickling a tag imports it); those lines must not mix in.
    result = subprocess.run([sys.executable, "-m", "ds_deblur", "inspect", str(tags / "ckpts"), "--json"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["latest_tag"]["name"] == "z2_w2"


def test_missing_path_exits_2_with_the_guide_message(tmp_path):
    missing = tmp_path / "outputs" / "ckpts" / "last.pth"
    result = subprocess.run([sys.executable, "-m", "ds_deblur", "inspect", str(missing)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"error: Checkpoint not found: {missing}" in result.stderr


def test_files_that_are_not_ours_are_refused_clearly(tmp_path, capsys):
    junk = tmp_path / "notes.pth"
    junk.write_text("not a checkpoint")
    assert main([str(junk)]) == 1
    assert f"error: {junk} is truncated or not a torch checkpoint" in capsys.readouterr().err
    listing = tmp_path / "list.pth"
    torch.save([1, 2, 3], listing)
    assert main([str(listing)]) == 1
    assert "neither a ds_deblur single-file checkpoint nor a weights export" in capsys.readouterr().err
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert "it is not a checkpoint directory" in capsys.readouterr().err
    evil = tmp_path / "best.pth"
    torch.save({"state_dict": Payload()}, evil)
    assert main([str(evil)]) == 1
    assert "was refused" in capsys.readouterr().err and not marker.exists()


def test_help_documents_path_kinds_and_json():
    from ds_deblur.ckpt.cli import inspect_parser as build_parser
    text = build_parser().format_help()
    for word in ("PATH", "--json", "checkpoint directory", "tag directory", "last.pth"):
        assert word in text
