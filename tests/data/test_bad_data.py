import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ds_deblur.data import ClipOptions, DatasetError, SpikeDeblurDataset

REPO = Path(__file__).resolve().parents[2]


def build(root, split="train", **kw):
    opts = ClipOptions(**{**dict(clip_len=3, k=4, mean=0.0, std=1.0, crop_size=16), **kw})
    return SpikeDeblurDataset(root, split, opts, training=split == "train")


def expect_error(root, *needles, **kw):
    with pytest.raises(DatasetError) as err:
        build(root, **kw)
    for needle in needles:
        assert str(needle) in str(err.value)
    return str(err.value)


def test_missing_spike_file(tiny_copy):
    path = tiny_copy / "train/seq_001/spike/000004.dat"
    path.unlink()
    expect_error(tiny_copy, "train/seq_001", "missing spike file", path)


def test_blur_sharp_count_mismatch(tiny_copy):
    (tiny_copy / "train/seq_000/sharp/000005.png").unlink()
    expect_error(tiny_copy, "train/seq_000", "blur has 6 frames, sharp has 5", "missing in sharp: 000005.png")


def test_frames_of_different_sizes(tiny_copy):
    path = tiny_copy / "train/seq_000/blur/000002.png"
    Image.new("RGB", (41, 32)).save(path)
    expect_error(tiny_copy, "train/seq_000", path, "32x41", "one size")


def test_unreadable_png(tiny_copy):
    path = tiny_copy / "train/seq_001/sharp/000001.png"
    path.write_bytes(b"not a png at all")
    expect_error(tiny_copy, "train/seq_001", "unreadable PNG", path)


def test_truncated_png_fails_at_load_naming_the_file(tiny_copy):
    path = tiny_copy / "train/seq_000/blur/000000.png"
    path.write_bytes(path.read_bytes()[:200])  # header intact: construction stays fast and accepts it
    ds = build(tiny_copy)
    with pytest.raises(DatasetError, match=str(path)):
        ds[0]


def test_truncated_dat(tiny_copy):
    path = tiny_copy / "val/seq_000/spike/000000.dat"
    path.write_bytes(path.read_bytes()[:-3])
    expect_error(tiny_copy, "val/seq_000", path, "size 317 bytes", "multiple of 40", split="val")


@pytest.mark.parametrize("make", ["missing", "no_sequences"])
def test_empty_split(tiny_copy, make):
    shutil.rmtree(tiny_copy / "val")
    if make == "no_sequences":
        (tiny_copy / "val").mkdir()
    expect_error(tiny_copy, str(tiny_copy / "val"), "empty split", split="val")


def test_sequence_shorter_than_a_clip_and_frames_smaller_than_the_crop(tiny_copy):
    expect_error(tiny_copy, "train/seq_000", "6 frames, fewer than a clip of 7", clip_len=7)
    expect_error(tiny_copy, "train/seq_001", "32x40, smaller than the 48x48 training crop", crop_size=48)


def test_every_problem_is_listed(tiny_copy):
    (tiny_copy / "train/seq_000/spike/000001.dat").unlink()
    (tiny_copy / "train/seq_001/blur/000003.png").write_bytes(b"junk")
    message = expect_error(tiny_copy, "2 problem(s)", "seq_000", "seq_001")
    assert "000001.dat" in message and "000003.png" in message


def test_voxel_cache_problems(tiny_copy):
    expect_error(tiny_copy, "missing voxel cache file", "prepare", use_voxel_cache=True)


def test_unknown_spike_size(tiny_copy):
    (tiny_copy / "meta.yaml").unlink()
    with pytest.raises(DatasetError, match="DATA.SPIKE_SIZE"):
        build(tiny_copy)
    assert len(SpikeDeblurDataset(tiny_copy, "val", ClipOptions(clip_len=3, k=4, mean=0, std=1),
                                  training=False, spike_size=(16, 20))) == 2


def run_check(root, *args):
    return subprocess.run([sys.executable, "-m", "ds_deblur.data.check", str(root), "--k", "4", "--clip-len", "3",
                           *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_check_cli_exit_codes(tiny_copy):
    good = run_check(tiny_copy)
    assert good.returncode == 0, good.stdout + good.stderr
    assert "spike size 16x20" in good.stdout and "no problems found" in good.stdout
    assert [line.split()[:3] for line in good.stdout.splitlines() if line.startswith(("train", "val"))] == \
           [["train", "2", "12"], ["val", "1", "6"]]
    png = tiny_copy / "val/seq_000/sharp/000002.png"
    png.write_bytes(png.read_bytes()[:-20])  # truncated: only a full verify notices
    (tiny_copy / "train/seq_001/spike/000000.dat").unlink()
    bad = run_check(tiny_copy)
    assert bad.returncode == 1
    assert "2 problem(s) found" in bad.stdout and str(png) in bad.stdout
    assert "train/seq_001: missing spike" in bad.stdout
    assert run_check(tiny_copy, "--bogus").returncode == 2
