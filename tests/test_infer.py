"""``python -m ds_deblur.infer`` with a tiny checkpoint trained by the real trainer, on synthetic footage whose
frames (72x100) are no multiple of the model's 64 pixels and whose sequences are longer or shorter than a clip."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ds_deblur.data.synth import SynthConfig, generate
from ds_deblur.infer import main
from ds_deblur.metrics import psnr, psnr_y, ssim_y
from train_utils import REPO, make_dataset, output_of, run_train

FOOTAGE = SynthConfig(seed=9, train_seqs=1, val_seqs=2, frames=7, size=(72, 100), spike_size=(64, 64), subframes=8,
                      objects=(1, 2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run directory of the tiny preset after 2 optimizer steps (single process)."""
    root = tmp_path_factory.mktemp("infer")
    out = root / "run"
    sets = ["TRAIN.TOTAL_STEPS=2", "LOG.SAVE_EVERY_STEPS=2", "TRAIN.VAL_EVERY_STEPS=2", "MODEL.IDENTITY_INIT=true",
            "DATA.CLIP_LEN=3"]
    proc = run_train(make_dataset(root / "data"), out, sets=sets, ranks=0)
    assert proc.returncode == 0, output_of(proc)
    return out


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("footage") / "synth", FOOTAGE)


def infer(ckpt, out, *args) -> int:
    return main(["--ckpt", str(ckpt), "--output", str(out), *map(str, args)])


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def as_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.transpose(2, 0, 1).astype(np.float64) / 255)[None]


@pytest.mark.slow
def test_sequences_longer_than_the_clip_give_one_png_per_frame_and_true_metrics(trained, footage, tmp_path):
    out = tmp_path / "out"
    assert infer(trained / "ckpts/last.pth", out, "--root", footage, "--split", "val") == 0  # clip 3 < 7 frames
    report = json.loads((out / "metrics.json").read_text())
    assert report["clip_len"] == 3 and report["num_frames"] == 14 and report["sequences"] == ["seq_000", "seq_001"]
    frames = {(f["seq"], f["frame"]): f for f in report["frames"]}
    for seq in ("seq_000", "seq_001"):
        written = pngs(out / seq)
        assert sorted(written) == sorted(p.name for p in (footage / "val" / seq / "blur").glob("*.png"))
        for name, image in written.items():
            assert image.shape == (72, 100, 3) and image.dtype == np.uint8
            sharp = as_tensor(np.asarray(Image.open(footage / "val" / seq / "sharp" / name)))
            blur = as_tensor(np.asarray(Image.open(footage / "val" / seq / "blur" / name)))
            got = frames[(seq, name[:-4])]
            assert got["psnr_rgb"] == pytest.approx(psnr(as_tensor(image), sharp).item(), abs=1e-6)
            assert got["psnr_y"] == pytest.approx(psnr_y(as_tensor(image), sharp).item(), abs=1e-6)
            assert got["ssim_y"] == pytest.approx(ssim_y(as_tensor(image), sharp).item(), abs=1e-6)
            assert got["input_psnr_rgb"] == pytest.approx(psnr(blur, sharp).item(), abs=1e-6)
    assert report["mean"]["psnr_rgb"] == pytest.approx(np.mean([f["psnr_rgb"] for f in report["frames"]]))
    assert report["input_mean"]["ssim_y"] == pytest.approx(np.mean([f["input_ssim_y"] for f in report["frames"]]))
    assert report["time_per_frame_s"] > 0 and report["peak_memory_mb"] > 0
    # Identity-initialised and barely trained: the restored frames stay close to the blurry input.
    assert abs(report["mean"]["psnr_rgb"] - report["input_mean"]["psnr_rgb"]) < 3


@pytest.mark.slow
def test_a_sequence_shorter_than_the_clip_and_tiles(trained, footage, tmp_path):
    seq = footage / "val" / "seq_000"
    ckpt = trained / "ckpts/last.pth"
    assert infer(ckpt, tmp_path / "whole", "--input", seq, "--clip-len", 8) == 0  # 7 frames, clip of 8
    whole = pngs(tmp_path / "whole" / "seq_000")
    assert len(whole) == 7 and all(image.shape == (72, 100, 3) for image in whole.values())
    # A tile as large as the padded frame (128) runs whole: the same result.
    assert infer(ckpt, tmp_path / "big_tile", "--input", seq, "--clip-len", 8, "--tile", 128) == 0
    for name, image in pngs(tmp_path / "big_tile" / "seq_000").items():
        assert np.abs(image.astype(int) - whole[name]).max() <= 1  # 1e-3 before rounding to 8 bits
    # Real tiles (64 px, overlap 32) are blended back into full frames of the input's size.
    assert infer(ckpt, tmp_path / "tiled", "--input", seq, "--clip-len", 8, "--tile", 64) == 0
    tiled = pngs(tmp_path / "tiled" / "seq_000")
    assert tiled.keys() == whole.keys() and all(image.shape == (72, 100, 3) for image in tiled.values())
    for name, image in tiled.items():
        assert psnr(as_tensor(image), as_tensor(whole[name])).item() > 30


@pytest.mark.slow
def test_every_kind_of_checkpoint_gives_the_same_frames(trained, footage, tmp_path):
    seq = footage / "val" / "seq_001"
    ckpts = trained / "ckpts"
    subprocess.run([sys.executable, "-m", "ds_deblur.convert", str(ckpts), "--weights-only", "--out",
                    str(tmp_path / "w.safetensors")], check=True, cwd=REPO, capture_output=True)
    subprocess.run([sys.executable, "-m", "ds_deblur.convert", str(ckpts), "--weights-only", "--out",
                    str(tmp_path / "w.pth")], check=True, cwd=REPO, capture_output=True)
    assert infer(ckpts / "last.pth", tmp_path / "ref", "--input", seq) == 0
    reference = pngs(tmp_path / "ref" / "seq_001")
    sources = {"dir": [ckpts], "tag": [ckpts / "step_000002"], "safetensors": [tmp_path / "w.safetensors"],
               "pth": [tmp_path / "w.pth", "--config", trained / "config.yaml"]}
    for name, (ckpt, *extra) in sources.items():
        assert infer(ckpt, tmp_path / name, "--input", seq, *extra) == 0, name
        got = pngs(tmp_path / name / "seq_001")
        assert got.keys() == reference.keys() and all(np.array_equal(got[k], reference[k]) for k in got), name


def error_of(capsys, *argv) -> str:
    assert main(list(map(str, argv))) == 2
    return capsys.readouterr().err


@pytest.mark.slow
def test_errors_name_the_problem(trained, footage, tmp_path, capsys):
    ckpt, out = trained / "ckpts/last.pth", tmp_path / "out"
    seq = footage / "val" / "seq_000"
    assert "Checkpoint not found" in error_of(capsys, "--ckpt", tmp_path / "nope.pth", "--output", out, "--input", seq)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    assert "garbage.pth was refused: it is not a plain torch checkpoint" in error_of(
        capsys, "--ckpt", garbage, "--output", out, "--input", seq)
    subprocess.run([sys.executable, "-m", "ds_deblur.convert", str(trained / "ckpts"), "--weights-only", "--out",
                    str(tmp_path / "w.pth")], check=True, cwd=REPO, capture_output=True)
    assert "--config" in error_of(capsys, "--ckpt", tmp_path / "w.pth", "--output", out, "--input", seq)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert "is a file" in error_of(capsys, "--ckpt", ckpt, "--output", a_file, "--input", seq)
    assert "multiple of 64" in error_of(capsys, "--ckpt", ckpt, "--output", out, "--input", seq, "--tile", 100)

    other = generate(tmp_path / "other", SynthConfig(**{**FOOTAGE.__dict__, "spike_size": (32, 48)}))
    assert "trained on spike size [64, 64]" in error_of(
        capsys, "--ckpt", ckpt, "--output", out, "--root", other)

    broken = tmp_path / "broken"
    shutil.copytree(footage, broken)
    (broken / "val/seq_001/spike/000003.dat").unlink()
    message = error_of(capsys, "--ckpt", ckpt, "--output", out, "--root", broken)
    assert "seq_001" in message and "000003.dat" in message and "no spike file" in message

    from ds_deblur.data.prepare import prepare
    cached = tmp_path / "cached"
    shutil.copytree(footage, cached)
    prepare(cached, k=8)  # a voxel cache with 8 bins; the model takes 4
    for spike_dir in cached.glob("val/*/spike"):
        shutil.rmtree(spike_dir)
    message = error_of(capsys, "--ckpt", ckpt, "--output", out, "--root", cached)
    assert "holds 8 spike bins" in message and "DATA.K = 4" in message
    assert not any(out.rglob("*.png"))  # nothing half-written for the bad inputs above


def test_cli_help_and_usage_errors():
    proc = subprocess.run([sys.executable, "-m", "ds_deblur.infer", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "--tile-overlap" in proc.stdout and "--clip-len" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ds_deblur.infer", "--ckpt", "x"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--output" in proc.stderr
