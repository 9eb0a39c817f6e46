import numpy as np
import pytest
import yaml
from PIL import Image

from ds_deblur.data import read_dat
from ds_deblur.data.images import GREY
from ds_deblur.data.spike_quality import main as spike_quality_main, measure
from ds_deblur.data.synth import SpikeSensor, SynthConfig, _natural_colour, generate, main as synth_main

SMALL = SynthConfig.first_generator(seed=1, train_seqs=1, val_seqs=1, frames=3, size=(24, 32), subframes=8,
                                     objects=(1, 2))


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


def test_first_generator_is_the_old_camera_and_scenes():
    old = SynthConfig.first_generator(seed=4)
    assert (old.seed, old.subframes, old.threshold, old.dark_rate, old.photons) == (4, 32, 2.0, 0.0, 0.0)
    assert (old.saturation, old.chroma_detail) == (1.0, 1.0)
    new = SynthConfig()
    assert (new.subframes, new.threshold) == (64, 1.0) and 0 < new.dark_rate < 0.05


def test_dark_spikes_fire_at_their_rate_in_the_dark():
    sensor = SpikeSensor(np.random.default_rng(0), (100, 100), threshold=1.0, dark_rate=0.01)
    sensor.accumulator[:] = 0
    fired = np.mean([sensor.expose(np.zeros((100, 100, 3), np.float32)) for _ in range(50)])
    assert 0.008 < fired < 0.012  # 500,000 pixel-frames: the standard error is 0.00014
    np.testing.assert_array_equal(sensor.accumulator, 0)  # spurious spikes take no charge


def test_shot_noise_keeps_the_mean_rate_and_adds_spread():
    grey = np.full((64, 64, 3), 0.3, np.float32)
    counts = {}
    for photons in (0.0, 5.0):
        sensor = SpikeSensor(np.random.default_rng(1), (64, 64), threshold=1.0, photons=photons)
        counts[photons] = np.sum([sensor.expose(grey) for _ in range(40)], axis=0)
    # noiseless: floor(start + 12) = 12 everywhere; 60 photons a pixel: a spread of sqrt(60) / 5 = 1.5 spikes
    assert counts[0.0].std() == 0 and counts[5.0].std() > 1.0
    assert abs(counts[5.0].mean() - counts[0.0].mean()) < 0.2


def test_natural_colour_keeps_grey_and_scales_colour():
    rng = np.random.default_rng(2)
    rgb = rng.uniform(0.2, 0.8, (32, 32, 3)).astype(np.float32)
    same = SynthConfig.first_generator()
    assert _natural_colour(rgb, same, 3.0) is rgb
    muted = _natural_colour(rgb, SynthConfig(saturation=0.5, chroma_detail=0.0), 3.0)
    np.testing.assert_allclose(muted @ GREY, rgb @ GREY, atol=1e-5)  # nothing clipped at these values
    colour = lambda x: x - (x @ GREY)[..., None]  # noqa: E731
    assert np.abs(colour(muted)).mean() < 0.2 * np.abs(colour(rgb)).mean()  # fine colour gone, the rest halved


def test_default_spikes_see_sharper_than_the_blurry_frame(tmp_path):
    # The defaults' promise (docs/data.md): the spikes around the exposure centre carry a sharper grey image than
    # the blurry frame, and a grey sensor sees most of what the blur destroyed.
    root = generate(tmp_path / "d", SynthConfig(train_seqs=0, val_seqs=1, frames=4))
    found = measure(root, "val", windows=(16, 32))
    psnr = found["psnr"]
    assert found["threshold_source"] == "meta.yaml" and found["spike_frames"] == 64
    assert max(psnr["tfp_16"], psnr["tfp_32"]) > psnr["blur_grey"] + 0.5
    assert psnr["blur_rgb_sharp_grey"] > psnr["blur_rgb"] + 3.0
    assert found["sharp_detail_grey_share"] > 0.75  # natural colour: most detail is grey


def test_spike_quality_fits_the_threshold_without_a_card(tmp_path, capsys):
    root = generate(tmp_path / "d", SynthConfig.first_generator(train_seqs=0, val_seqs=1, frames=3, threshold=1.5,
                                                                subframes=32))
    card = yaml.safe_load((root / "meta.yaml").read_text())
    (root / "meta.yaml").write_text(yaml.safe_dump({"spike_size": card["spike_size"]}))
    found = measure(root, "val", windows=(8,))
    assert found["threshold_source"] == "fitted to the blurry frames"
    assert found["threshold"] == pytest.approx(1.5, rel=0.05)
    assert spike_quality_main([str(root), "--threshold", "1.5", "--windows", "8", "16"]) == 0
    out = capsys.readouterr().out
    assert "threshold 1.5 from --threshold" in out and "TFP, middle 16 spike frames" in out
    assert spike_quality_main([str(tmp_path / "none")]) == 1


def test_cli_noise_and_colour_options_and_report(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--train-seqs", "0", "--frames", "2", "--size", "16x16", "--dark-rate", "0.02",
            "--photons", "50", "--saturation", "0.3", "--chroma-detail", "0.5", "--report"]
    assert synth_main(args) == 0
    settings = yaml.safe_load((out / "meta.yaml").read_text())["settings"]
    assert (settings["dark_rate"], settings["photons"], settings["saturation"], settings["chroma_detail"]) == \
        (0.02, 50.0, 0.3, 0.5)
    assert "TFP, middle 32 spike frames" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path / "x"), "--dark-rate", "2"])
