"""``ds-deblur infer`` with a tiny checkpoint trained by the real trainer (on a dataset in the GoPro spike
release's layout), on synthetic footage in either layout whose frames (72x100) are no multiple of the model's 64
pixels and whose sequences are longer or shorter than a clip; the published protocol's figures against an
independent computation on the written PNGs."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from ds_deblur.data.frame_store import lmdb_path
from ds_deblur.data.synth import SynthConfig, generate
from ds_deblur.errors import InferenceError
from ds_deblur.inference.cli import Tiling, main, parse_tiling
from ds_deblur.metrics import psnr, psnr_y, ssim_y
from support.kair_lmdb import write_kair_lmdb
from support.train_utils import REPO, SYNTH, output_of, run_train

FOOTAGE = SynthConfig.first_generator(seed=9, train_seqs=1, val_seqs=2, frames=7, size=(72, 100), spike_size=(64, 64),
                                       subframes=8, objects=(1, 2))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run directory of the tiny preset after 2 optimizer steps (single process), trained and validated on a
    dataset in the release layout with the config a unified dataset takes (DATA.VAL_SPLIT val reads 'test')."""
    root = tmp_path_factory.mktemp("infer")
    out = root / "run"
    sets = ["TRAIN.TOTAL_STEPS=2", "LOG.SAVE_EVERY_STEPS=2", "LOG.VAL_EVERY_STEPS=2", "MODEL.IDENTITY_INIT=true",
            "DATA.CLIP_LEN=3"]
    proc = run_train(generate(root / "data", SYNTH, layout="gopro"), out, sets=sets, ranks=0)
    assert proc.returncode == 0, output_of(proc)
    assert json.loads((out / "metrics/val_step_000002.json").read_text())["psnr_rgb"] > 15
    return out


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("footage") / "synth", FOOTAGE)


@pytest.fixture(scope="module")
def release_footage(tmp_path_factory) -> Path:
    """FOOTAGE in the release layout, its second test sequence cut to 4 frames: sequences of unequal length, so the
    mean over sequences differs from the mean over frames."""
    root = generate(tmp_path_factory.mktemp("footage") / "gopro", FOOTAGE, layout="gopro")
    for frame in (91, 92, 93):
        for path in root.glob(f"GOPRO_Large*/test/GOPR0473_00_00/*/{frame:06d}.*"):
            path.unlink()
    return root


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
    subprocess.run([sys.executable, "-m", "ds_deblur", "convert", str(ckpts), "--weights-only", "--out",
                    str(tmp_path / "w.safetensors")], check=True, cwd=REPO, capture_output=True)
    subprocess.run([sys.executable, "-m", "ds_deblur", "convert", str(ckpts), "--weights-only", "--out",
                    str(tmp_path / "w.pth")], check=True, cwd=REPO, capture_output=True)
    assert infer(ckpts / "last.pth", tmp_path / "ref", "--input", seq) == 0
    reference = pngs(tmp_path / "ref" / "seq_001")
    sources = {"dir": [ckpts], "tag": [ckpts / "step_000002"], "safetensors": [tmp_path / "w.safetensors"],
               "pth": [tmp_path / "w.pth", "--config", trained / "config.yaml"]}
    for name, (ckpt, *extra) in sources.items():
        assert infer(ckpt, tmp_path / name, "--input", seq, *extra) == 0, name
        got = pngs(tmp_path / name / "seq_001")
        assert got.keys() == reference.keys() and all(np.array_equal(got[k], reference[k]) for k in got), name


def y_channel(rgb8: np.ndarray) -> np.ndarray:
    """BT.601 Y of 8-bit RGB on the 0-255 scale, as KAIR's bgr2ycbcr(only_y=True) x 255 (not rounded)."""
    r, g, b = (rgb8[..., c].astype(np.float64) for c in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def psnr_8bit(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(20 * np.log10(255.0 / np.sqrt(mse)))


def ssim_8bit(a: np.ndarray, b: np.ndarray) -> float:
    """Wang et al.'s SSIM on the 0-255 scale with an 11x11 Gaussian (sigma 1.5), valid windows; RGB: the mean over
    the channels (KAIR's calculate_ssim)."""
    if a.ndim == 3:
        return float(np.mean([ssim_8bit(a[..., c], b[..., c]) for c in range(a.shape[2])]))
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()
    x, y = a.astype(np.float64), b.astype(np.float64)

    def local(img: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", sliding_window_view(img, (11, 11)), window)

    mx, my = local(x), local(y)
    vx, vy, cxy = local(x * x) - mx ** 2, local(y * y) - my ** 2, local(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(np.mean((2 * mx * my + c1) * (2 * cxy + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))))


@pytest.mark.slow
def test_release_layout_and_the_published_protocol_on_the_written_frames(trained, release_footage, tmp_path, capsys):
    out = tmp_path / "out"
    assert infer(trained / "ckpts/last.pth", out, "--root", release_footage) == 0  # default split val -> test
    report = json.loads((out / "metrics.json").read_text())
    assert report["sequences"] == ["GOPR0472_00_00", "GOPR0473_00_00"] and report["num_frames"] == 11
    per_seq = {}
    for seq in report["sequences"]:
        frames_dir = release_footage / "GOPRO_Large/test" / seq
        written = pngs(out / seq)
        assert sorted(written) == sorted(p.name for p in (frames_dir / "blur").glob("*.png"))  # GoPro's numbers
        assert min(written) == {"GOPR0472_00_00": "000047.png", "GOPR0473_00_00": "000087.png"}[seq]
        scores = []
        for name, image in written.items():
            sharp = np.asarray(Image.open(frames_dir / "sharp" / name))
            expected = {"psnr_rgb": psnr_8bit(image, sharp), "ssim_rgb": ssim_8bit(image, sharp),
                        "psnr_y": psnr_8bit(y_channel(image), y_channel(sharp)),
                        "ssim_y": ssim_8bit(y_channel(image), y_channel(sharp))}
            got = next(f for f in report["frames"] if (f["seq"], f["frame"]) == (seq, name[:-4]))
            for key, value in expected.items():
                assert got[key] == pytest.approx(value, abs=1e-6), (seq, name, key)
            scores.append(expected)
        per_seq[seq] = {key: np.mean([s[key] for s in scores]) for key in scores[0]}
        assert report["protocol"]["sequences"][seq]["frames"] == len(scores)
        for key, value in per_seq[seq].items():
            assert report["protocol"]["sequences"][seq][key] == pytest.approx(value, abs=1e-6)
    for key in ("psnr_rgb", "ssim_rgb", "psnr_y", "ssim_y"):
        over_sequences = np.mean([values[key] for values in per_seq.values()])
        assert report["protocol"]["overall"][key] == pytest.approx(over_sequences, abs=1e-6)
    # 7 and 4 frames: the mean over sequences is not the mean over frames (which "mean" keeps holding).
    assert report["protocol"]["overall"]["psnr_rgb"] != pytest.approx(report["mean"]["psnr_rgb"], abs=1e-6)
    assert report["mean"]["psnr_rgb"] == pytest.approx(np.mean([f["psnr_rgb"] for f in report["frames"]]))
    printed = capsys.readouterr().out
    assert "published protocol" in printed and "GOPR0473_00_00" in printed and "average" in printed


@pytest.mark.slow
def test_svrt_layout_gives_the_frames_of_the_unified_layout(trained, footage, tmp_path):
    # The same synthetic footage written in S-VRT's README layout, with PNG frames and as KAIR LMDBs: inference
    # reads the test split there and restores the same pixels as from the unified layout's val split.
    root = generate(tmp_path / "svrt", FOOTAGE, layout="svrt")
    lmdb_root = shutil.copytree(root, tmp_path / "svrt_lmdb")
    for folder in lmdb_root.glob("GOPRO_Large/test_GT*"):
        write_kair_lmdb(folder, lmdb_path(folder))
        shutil.rmtree(folder)
    assert infer(trained / "ckpts/last.pth", tmp_path / "unified", "--root", footage, "--split", "val") == 0
    assert infer(trained / "ckpts/last.pth", tmp_path / "disk", "--root", root, "--split", "val") == 0
    assert infer(trained / "ckpts/last.pth", tmp_path / "lmdb", "--root", lmdb_root, "--split", "val",
                 "--io-backend", "lmdb") == 0
    unified = [pngs(d) for d in sorted((tmp_path / "unified").iterdir()) if d.is_dir()]
    assert len(unified) == 2
    for backend in ("disk", "lmdb"):
        svrt = [pngs(d) for d in sorted((tmp_path / backend).iterdir()) if d.is_dir()]
        assert len(svrt) == len(unified)
        for ours, theirs in zip(svrt, unified):
            assert len(ours) == len(theirs)
            assert all(np.array_equal(a, b) for a, b in zip(ours.values(), theirs.values())), backend


@pytest.mark.slow
def test_vrt_tile_form_matches_our_windows(trained, release_footage, tmp_path):
    seq = release_footage / "GOPRO_Large/test/GOPR0472_00_00"  # its spikes are found in GOPRO_Large_spike_seq
    ckpt = trained / "ckpts/last.pth"
    assert infer(ckpt, tmp_path / "ours", "--input", seq, "--clip-len", 4) == 0
    # 4 frames per window overlapping by 2 (= our half a clip), tiles as large as the padded frame (= whole).
    assert infer(ckpt, tmp_path / "vrt", "--input", seq, "--tile", 4, 128, 128, "--tile-overlap", 2, 20, 20) == 0
    ours, vrt = pngs(tmp_path / "ours" / seq.name), pngs(tmp_path / "vrt" / seq.name)
    assert ours.keys() == vrt.keys() and len(ours) == 7
    assert all(np.abs(ours[k].astype(int) - vrt[k]).max() <= 1 for k in ours)
    report = json.loads((tmp_path / "vrt" / "metrics.json").read_text())
    assert (report["clip_len"], report["clip_overlap"], report["tile"]) == (4, 2, [4, 128, 128])


def test_tile_options_in_both_forms():
    assert parse_tiling(None, [32], None) == Tiling()
    assert parse_tiling([256], [16], 6) == Tiling(6, None, (256, 256), (16, 16))
    assert parse_tiling([18, 192, 128], [2, 20, 10], None) == Tiling(18, 2, (192, 128), (20, 10))
    assert parse_tiling([18, 192, 192], [20], 18) == Tiling(18, None, (192, 192), (20, 20))
    assert parse_tiling([0, 0, 0], [2, 20, 20], None) == Tiling(0, 2, None, (20, 20))  # whole sequence and frames
    for tile, overlap, clip, needle in [([100], [32], None, "multiple of 64"), ([64, 64], [8], None, "one size"),
                                        ([192], [2, 20, 20], None, "--tile T H W"),
                                        ([18, 192, 192], [2, 20, 20], 6, "--clip-len says 6"),
                                        ([1, 192, 192], [0, 20, 20], None, "at least 2 frames"),
                                        ([6, 192, 192], [6, 20, 20], None, "frame overlap below"),
                                        ([6, 192, 192], [2, 192, 20], None, "larger than --tile-overlap")]:
        with pytest.raises(InferenceError, match=needle):
            parse_tiling(tile, overlap, clip)


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
    subprocess.run([sys.executable, "-m", "ds_deblur", "convert", str(trained / "ckpts"), "--weights-only", "--out",
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
    proc = subprocess.run([sys.executable, "-m", "ds_deblur", "infer", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "--tile-overlap" in proc.stdout and "--clip-len" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "ds_deblur", "infer", "--ckpt", "x"], cwd=REPO, capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--output" in proc.stderr
