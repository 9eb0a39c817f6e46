"""The GoPro spike release's layout as downloaded, beside the unified one: the same data must read the same, every
bad-data error names the file in the release's folders, and the tools (check, prepare) work on both. S-VRT's
layouts: test_svrt_layout.py."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_bad_data import build, expect_error

from ds_deblur.data import DatasetError, SampleKey, build_datasets
from ds_deblur.data.check import main as check_main
from ds_deblur.data.layout import frame_files
from ds_deblur.data.loader import load_voxel_stats
from ds_deblur.data.prepare import main as prepare_main, prepare
from ds_deblur.data.roots import LayoutOptions, open_layout, sequence_dirs_of
from ds_deblur.data.synth import main as synth_main

FRAMES, SPIKES = "GOPRO_Large", "GOPRO_Large_spike_seq"
TRAIN_SEQ, TEST_SEQ = "GOPR0372_00_00", "GOPR0472_00_00"


def test_synth_writes_the_release_layout(gopro_root, tiny):
    assert sorted(p.name for p in gopro_root.iterdir()) == [FRAMES, SPIKES, "meta.yaml"]
    assert yaml.safe_load((gopro_root / SPIKES / "config.yaml").read_text()) == {
        "spike_h": 16, "spike_w": 20, "is_labeled": False, "labeled_data_type": [0]}
    assert sorted(p.name for p in (gopro_root / FRAMES).iterdir()) == ["test", "train"]
    assert sorted(p.name for p in (gopro_root / FRAMES / "train").iterdir()) == [TRAIN_SEQ, "GOPR0373_00_00"]
    blur = sorted(p.name for p in (gopro_root / FRAMES / "train" / "GOPR0373_00_00" / "blur").iterdir())
    assert blur == [f"{n:06d}.png" for n in range(87, 87 + tiny.synth.frames)]  # GoPro-like numbers, not from 0
    spikes = sorted(p.name for p in (gopro_root / SPIKES / "test" / TEST_SEQ / "spike").iterdir())
    assert spikes == [f"{n:06d}.dat" for n in range(47, 47 + tiny.synth.frames)]
    assert not (gopro_root / FRAMES / "train" / TRAIN_SEQ / "spike").exists()
    card = yaml.safe_load((gopro_root / "meta.yaml").read_text())
    assert card["layout"] == "gopro" and card["splits"]["test"]["sequences"] == 1


@pytest.mark.parametrize("split", ["train", "val"])
def test_both_layouts_read_the_same_clips(tiny_root, gopro_root, split):
    unified, release = build(tiny_root, split), build(gopro_root, split)
    assert release.split == split and release.sequences[0].path.parent.name == ("test" if split == "val" else split)
    assert len(unified) == len(release) > 0
    for position in range(len(unified)):
        key = SampleKey(position, 2, position, False)
        a, b = unified[key], release[key]
        for name in ("blur", "sharp", "spike_vox"):
            assert torch.equal(a[name], b[name]), (position, name)
        assert torch.equal(a["meta"]["frames"], b["meta"]["frames"])
    assert release[0]["meta"]["seq"] in (TRAIN_SEQ, TEST_SEQ)


def test_spike_size_comes_from_the_release_config(gopro_copy):
    (gopro_copy / "meta.yaml").unlink()  # a real download has no card of ours
    assert build(gopro_copy).spike_size == (16, 20)
    config = gopro_copy / SPIKES / "config.yaml"
    config.write_text(yaml.safe_dump({"spike_h": 16, "spike_w": 24, "is_labeled": False}))
    assert open_layout(gopro_copy).spike_size() == (16, 24)  # what it says, even when the streams then misfit
    (gopro_copy / "meta.yaml").write_text(yaml.safe_dump({"spike_size": [16, 20]}))
    message = expect_error(gopro_copy, "disagree", str(config), "[16, 24]", str(gopro_copy / "meta.yaml"))
    assert "DATA.SPIKE_SIZE" in message
    config.unlink()
    (gopro_copy / "meta.yaml").unlink()
    expect_error(gopro_copy, "spike sensor size unknown", "DATA.SPIKE_SIZE", str(config))
    expect_error(gopro_copy / "nowhere", str(gopro_copy / "nowhere"), "is not a folder (DATA.ROOT)")


def test_bad_data_errors_name_the_file_in_the_release(gopro_copy):
    spike = gopro_copy / SPIKES / "train" / TRAIN_SEQ / "spike" / "000049.dat"
    spike.unlink()
    expect_error(gopro_copy, f"train/{TRAIN_SEQ}", "missing spike file", spike)
    shutil.copy(gopro_copy / SPIKES / "train" / TRAIN_SEQ / "spike" / "000048.dat", spike)
    truncated = gopro_copy / SPIKES / "test" / TEST_SEQ / "spike" / "000050.dat"
    truncated.write_bytes(truncated.read_bytes()[:-3])
    expect_error(gopro_copy, f"test/{TEST_SEQ}", truncated, "size 317 bytes", "multiple of 40", split="val")
    sharp = gopro_copy / FRAMES / "train" / TRAIN_SEQ / "sharp" / "000052.png"
    sharp.unlink()
    expect_error(gopro_copy, "blur has 6 frames, sharp has 5", "missing in sharp: 000052.png")
    Image.new("RGB", (40, 32)).save(sharp)
    png = gopro_copy / FRAMES / "train" / "GOPR0373_00_00" / "blur" / "000088.png"
    png.write_bytes(b"not a png")
    expect_error(gopro_copy, "unreadable PNG", png)
    shutil.rmtree(gopro_copy / FRAMES / "test")
    expect_error(gopro_copy, str(gopro_copy / FRAMES / "val"), "empty split", split="val")


def test_separate_spike_root_in_either_layout(tiny_root, gopro_copy, tmp_path, make_cfg):
    elsewhere = tmp_path / "spikes_elsewhere"
    shutil.move(gopro_copy / SPIKES, elsewhere)
    with pytest.raises(DatasetError, match="missing spike file"):
        build(gopro_copy)
    layout = open_layout(gopro_copy, LayoutOptions(spike_root=str(elsewhere)))
    assert layout.release and layout.spike_root == elsewhere
    assert layout.frames_dir("val") == gopro_copy / FRAMES / "test"
    stats = {"NORM": {"MEAN": 0.5, "STD": 2.0}}
    train, val = build_datasets(make_cfg(gopro_copy, {"SPIKE_ROOT": str(elsewhere), **stats}))
    reference, _ = build_datasets(make_cfg(tiny_root, stats))
    assert torch.equal(train[3]["spike_vox"], reference[3]["spike_vox"]) and len(val) == 2
    # Unified frames with the spike streams in a tree of their own (DATA.SPIKE_ROOT).
    frames = Path(shutil.copytree(tiny_root, tmp_path / "frames"))
    for spike_dir in sorted(frames.glob("*/*/spike")):
        target = tmp_path / "spike_tree" / spike_dir.relative_to(frames)
        target.parent.mkdir(parents=True)
        shutil.move(spike_dir, target)
    train, _ = build_datasets(make_cfg(frames, {"SPIKE_ROOT": str(tmp_path / "spike_tree"), **stats}))
    assert torch.equal(train[3]["spike_vox"], reference[3]["spike_vox"])


def test_folder_names_and_image_extensions_come_from_the_config(tiny_copy, make_cfg, tiny_root):
    for seq in sorted(tiny_copy.glob("*/*")):
        (seq / "spike").rename(seq / "dat")
    for png in sorted(tiny_copy.glob("train/seq_000/*/*.png")):  # one sequence stored as BMP (lossless)
        Image.open(png).save(png.with_suffix(".bmp"))
        png.unlink()
    data = {"SPIKE_DIR": "dat", "NORM": {"MEAN": 0.5, "STD": 2.0}}
    with pytest.raises(DatasetError, match=r"no frames \(\.png\) in .*seq_000/blur"):
        build_datasets(make_cfg(tiny_copy, data))
    train, _ = build_datasets(make_cfg(tiny_copy, {**data, "IMAGE_EXTS": [".png", ".bmp"]}))
    reference, _ = build_datasets(make_cfg(tiny_root, {"NORM": {"MEAN": 0.5, "STD": 2.0}}))
    assert train.sequences[0].blur(0).name == "000000.bmp"
    for i in (0, 5):
        for name in ("blur", "sharp", "spike_vox"):
            assert torch.equal(train[i][name], reference[i][name])
    Image.open(tiny_copy / "train/seq_000/blur/000000.bmp").save(tiny_copy / "train/seq_000/blur/000000.png")
    with pytest.raises(DatasetError, match="000000.png in .* share their stem"):
        build_datasets(make_cfg(tiny_copy, {**data, "IMAGE_EXTS": [".png", ".bmp"]}))


def test_frames_are_ordered_by_number(tmp_path):
    for name in ("10.png", "9.png", "100.png", "notes.txt", "b.png", "a.png"):
        (tmp_path / name).write_bytes(b"")
    files, clashes = frame_files(tmp_path, [".png"])
    assert list(files) == ["9", "10", "100", "a", "b"] and clashes == []


def test_a_release_sequence_given_alone_finds_its_spikes(gopro_root, tiny_root):
    seq, layout = sequence_dirs_of(gopro_root / FRAMES / "test" / TEST_SEQ)
    assert seq.spikes == gopro_root / SPIKES / "test" / TEST_SEQ and layout.release
    seq, layout = sequence_dirs_of(tiny_root / "val" / "seq_000")
    assert seq.spikes == seq.frames == tiny_root / "val" / "seq_000" and not layout.release


def check(capsys, *args):
    """``ds-deblur check ARGS`` (the dataset root, or the separate roots' options, first) in this process: (exit
    status, printed text)."""
    status = check_main([*map(str, args), "--k", "4", "--clip-len", "3"])
    return status, capsys.readouterr().out


def test_check_cli_on_the_release(gopro_copy, capsys):
    status, out = check(capsys, gopro_copy)
    assert status == 0, out
    assert "GoPro spike release" in out and "spike size 16x20" in out
    assert [line.split()[:3] for line in out.splitlines() if line.startswith(("train", "test"))] == \
           [["train", "2", "12"], ["test", "1", "6"]]
    moved = gopro_copy.parent / "moved"
    shutil.move(gopro_copy / SPIKES, moved)
    assert check(capsys, gopro_copy)[0] == 1
    assert check(capsys, gopro_copy, "--spike-root", moved)[0] == 0
    (moved / "test" / TEST_SEQ / "spike" / "000051.dat").unlink()
    status, out = check(capsys, gopro_copy, "--spike-root", moved)
    assert status == 1 and str(moved / "test" / TEST_SEQ / "spike" / "000051.dat") in out


def test_prepare_writes_the_cache_beside_the_release_spikes(gopro_copy, tiny_copy):
    stats = prepare(gopro_copy, k=4, dtype="float32")
    cache = sorted(gopro_copy.glob(f"{SPIKES}/*/*/spike_vox/*.npy"))
    assert len(cache) == 18 and not list(gopro_copy.glob(f"{FRAMES}/**/*.npy"))
    assert (gopro_copy / SPIKES / "voxel_stats.json").is_file() and not (gopro_copy / "voxel_stats.json").exists()
    assert stats == prepare(tiny_copy, k=4, dtype="float32")  # the same streams: the same statistics
    from_dat, from_cache = build(gopro_copy, "val"), build(gopro_copy, "val", use_voxel_cache=True)
    assert torch.equal(from_dat[1]["spike_vox"], from_cache[1]["spike_vox"])
    assert load_voxel_stats(open_layout(gopro_copy), 4, (16, 20)) == (stats.mean, stats.std)
    (gopro_copy / SPIKES / "voxel_stats.json").unlink()
    for folder in sorted(gopro_copy.glob(f"{SPIKES}/*/*/spike_vox")):
        shutil.rmtree(folder)
    assert prepare_main([str(gopro_copy), "--k", "4", "--splits", "train", "test", "--stats-only"]) == 0
    assert not list(gopro_copy.glob("**/*.npy"))  # statistics only, the same ones
    assert load_voxel_stats(open_layout(gopro_copy), 4, (16, 20)) == pytest.approx((stats.mean, stats.std))


def test_synth_cli_layouts(tmp_path, capsys):
    args = ["--seed", "4", "--train-seqs", "1", "--val-seqs", "1", "--frames", "2", "--size", "16x24",
            "--spike-size", "8x16", "--subframes", "4"]
    assert synth_main(["--out", str(tmp_path / "g"), *args, "--layout", "gopro"]) == 0
    assert "1 test sequences" in capsys.readouterr().out
    assert (tmp_path / "g" / SPIKES / "test" / "GOPR0472_00_00" / "spike" / "000047.dat").is_file()
    assert synth_main(["--out", str(tmp_path / "u"), *args, "--layout", "unified"]) == 0
    unified = sorted(p.relative_to(tmp_path / "u") for p in (tmp_path / "u").rglob("*.png"))
    assert unified[0] == Path("train/seq_000/blur/000000.png")
    a = np.asarray(Image.open(tmp_path / "u/val/seq_000/sharp/000001.png"))
    b = np.asarray(Image.open(tmp_path / "g" / FRAMES / "test/GOPR0472_00_00/sharp/000048.png"))
    assert np.array_equal(a, b)
    with pytest.raises(SystemExit):
        synth_main(["--out", str(tmp_path / "x"), "--layout", "other"])
