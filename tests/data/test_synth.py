import numpy as np
import pytest
import yaml
from PIL import Image

from ds_deblur.data import read_dat
from ds_deblur.data.synth import SynthConfig, generate
from ds_deblur.data.synth import SpikeSensor
from ds_deblur.data.synth import main as synth_main

SMALL = SynthConfig(seed=1, train_seqs=1, val_seqs=1, frames=3, size=(24, 32), subframes=8, objects=(1, 2))


def files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = files(generate(tmp_path / "a", SMALL))
    b = files(generate(tmp_path / "b", SMALL))
    c = files(generate(tmp_path / "c", SynthConfig(**{**SMALL.__dict__, "seed": 2})))
    assert a == b
    assert a.keys() == c.keys()
    differing = [name for name in a if a[name] != c[name]]
    assert any(n.suffix == ".png" for n in differing) and any(n.suffix == ".dat" for n in differing)


def test_layout_and_meta_card(tiny_root, tiny):
    synth = tiny.synth
    for split, count in (("train", synth.train_seqs), ("val", synth.val_seqs)):
        seqs = sorted((tiny_root / split).iterdir())
        assert [s.name for s in seqs] == [f"seq_{i:03d}" for i in range(count)]
        for sub, ext in (("blur", "png"), ("sharp", "png"), ("spike", "dat")):
            assert len(list((seqs[0] / sub).glob(f"*.{ext}"))) == synth.frames
    card = yaml.safe_load((tiny_root / "meta.yaml").read_text())
    assert card["rgb_size"] == [32, 40] and card["spike_size"] == [16, 20]
    assert (card["threshold"], card["subframes"], card["seed"]) == (2.0, 8, 3)
    assert card["splits"]["train"] == {"sequences": 2, "frames_per_sequence": 6}
    assert Image.open(tiny_root / "val/seq_000/blur/000000.png").size == (40, 32)
    assert read_dat(tiny_root / "val/seq_000/spike/000000.dat", (16, 20)).shape == (8, 16, 20)


def test_integrate_and_fire():
    sensor = SpikeSensor(np.random.default_rng(0), (2, 3), threshold=2.0)
    start = sensor.accumulator.copy()
    assert (0 <= start).all() and (start < 2.0).all()
    grey = np.full((2, 3, 3), 0.7, np.float32)  # grey 0.7 (equal channels)
    fired = np.sum([sensor.expose(grey) for _ in range(20)], axis=0)
    np.testing.assert_array_equal(fired, np.floor((start + 20 * 0.7) / 2.0))
    np.testing.assert_allclose(sensor.accumulator, (start + 14.0) % 2.0, atol=1e-5)


def test_smaller_sensor_sees_area_downsampled_intensity():
    sensor = SpikeSensor(np.random.default_rng(0), (1, 2), threshold=1.0)
    sensor.accumulator[:] = 0
    rgb = np.zeros((2, 4, 3), np.float32)
    rgb[:, :2] = 0.9  # left 2x2 block: mean 0.9
    rgb[0, 2:] = 0.4  # right 2x2 block: half 0.4, half 0 -> mean 0.2
    sensor.expose(rgb)
    np.testing.assert_allclose(sensor.accumulator, [[0.9, 0.2]], atol=1e-6)


def test_spike_counts_follow_the_exposure_intensity(tmp_path):
    cfg = SynthConfig(**{**SMALL.__dict__, "frames": 4, "subframes": 16})
    root = generate(tmp_path / "d", cfg)
    seq = root / "train/seq_000"
    grey = sum(np.asarray(Image.open(seq / "blur" / f"{f:06d}.png"), np.float64) / 255 @ [0.299, 0.587, 0.114]
               for f in range(4))
    spikes = sum(read_dat(seq / "spike" / f"{f:06d}.dat", cfg.size).sum(axis=0) for f in range(4))
    # fired = floor((start + sum of intensities) / TH): within one spike plus PNG rounding of the blur
    assert np.abs(spikes - grey * cfg.subframes / cfg.threshold).max() <= 1 + 4 * 16 * 0.5 / 255 / 2


def test_default_dataset_is_blurry_but_learnable(tmp_path):
    root = generate(tmp_path / "default")
    psnr = []
    for blur in sorted(root.glob("*/*/blur/*.png")):
        x = np.asarray(Image.open(blur), np.float64)
        y = np.asarray(Image.open(blur.parent.parent / "sharp" / blur.name), np.float64)
        psnr.append(10 * np.log10(255 ** 2 / np.mean((x - y) ** 2)))
    assert len(psnr) == (6 + 2) * 16
    assert 22 < np.mean(psnr) < 28


def test_cli(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--seed", "4", "--train-seqs", "1", "--val-seqs", "1", "--frames", "2",
            "--size", "16x24", "--spike-size", "8x12", "--subframes", "4", "--threshold", "1.5"]
    assert synth_main(args) == 0
    card = yaml.safe_load((out / "meta.yaml").read_text())
    assert (card["rgb_size"], card["spike_size"], card["threshold"]) == ([16, 24], [8, 12], 1.5)
    assert synth_main(args) == 1 and "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path / "x"), "--size", "big"])
