"""S-VRT's data as its README and option files lay it out: ``GOPRO_Large/{split}_GT[_blurred]/SEQ/NNNNNN.png`` beside
the release's spike tree, its separate roots (dataroot_gt/lq/spike), KAIR meta_info files and KAIR LMDBs. The same
data must read the same as the release's layout, and every error must name the file, or the LMDB and the key."""
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image
from test_bad_data import build, expect_error
from test_layouts import check
from torch.utils.data import DataLoader

from ds_deblur.config import ConfigError
from ds_deblur.data import DatasetError, SampleKey, build_datasets
from ds_deblur.data.frame_store import LmdbFrame, lmdb_path
from ds_deblur.data.images import read_rgb
from ds_deblur.data.roots import LayoutOptions, open_layout
from ds_deblur.data.synth import generate, main as synth_main
from ds_deblur.inference.pipeline import find_sequences
from support.kair_lmdb import write_kair_lmdb

FRAMES, SPIKES = "GOPRO_Large", "GOPRO_Large_spike_seq"
TRAIN_SEQ, OTHER_SEQ, TEST_SEQ = "GOPR0372_00_00", "GOPR0373_00_00", "GOPR0472_00_00"
STATS = {"NORM": {"MEAN": 0.5, "STD": 2.0}}
SPLIT_FOLDERS = ("train_GT", "train_GT_blurred", "test_GT", "test_GT_blurred")


@pytest.fixture(scope="session")
def svrt_root(tmp_path_factory, tiny) -> Path:
    """The tiny dataset in S-VRT's layout (the pixels and spikes of ``gopro_root``); read-only."""
    return generate(tmp_path_factory.mktemp("synth") / "svrt", tiny.synth, layout="svrt")


@pytest.fixture
def svrt_copy(svrt_root, tmp_path) -> Path:
    return Path(shutil.copytree(svrt_root, tmp_path / "svrt"))


@pytest.fixture
def svrt_lmdb(svrt_copy) -> Path:
    """``svrt_copy`` with its frames only in KAIR LMDBs (``GOPRO_Large/{split}_GT[_blurred].lmdb``)."""
    for name in SPLIT_FOLDERS:
        folder = svrt_copy / FRAMES / name
        write_kair_lmdb(folder, lmdb_path(folder))
        shutil.rmtree(folder)  # nothing can come from the PNG files
    return svrt_copy


def separate_roots(root: Path, spike_root: str = f"{SPIKES}/{{split}}") -> dict:
    """DATA keys naming ``root``'s folders as S-VRT's dataroot_gt/lq/spike do, with {split}."""
    return {"ROOT": "", "GT_ROOT": str(root / FRAMES / "{split}_GT"),
            "LQ_ROOT": str(root / FRAMES / "{split}_GT_blurred"), "SPIKE_ROOT": str(root / spike_root)}


def assert_same_samples(a, b, positions=None):
    assert len(a) == len(b) > 0
    for position in positions if positions is not None else range(len(a)):
        key = SampleKey(position, 1, position, False)
        x, y = a[key], b[key]
        for name in ("blur", "sharp", "spike_vox"):
            assert torch.equal(x[name], y[name]), (position, name)


def test_synth_writes_svrt_layout_and_it_is_recognised(svrt_root, tiny, tmp_path, capsys):
    assert sorted(p.name for p in (svrt_root / FRAMES).iterdir()) == sorted(SPLIT_FOLDERS)
    sharp = sorted(p.name for p in (svrt_root / FRAMES / "train_GT" / OTHER_SEQ).iterdir())
    assert sharp == [f"{n:06d}.png" for n in range(87, 87 + tiny.synth.frames)]
    assert (svrt_root / SPIKES / "test" / TEST_SEQ / "spike" / "000047.dat").is_file()
    assert (svrt_root / SPIKES / "config.yaml").is_file()
    layout = open_layout(svrt_root)
    assert layout.kind == "svrt" and not layout.release and "S-VRT's GoPro layout" in layout.describe()
    assert layout.frames_dir("val") == svrt_root / FRAMES / "test_GT_blurred"  # no val: GoPro's test
    assert layout.spike_size() == (16, 20)  # from GOPRO_Large_spike_seq/config.yaml
    assert [s.name for s in layout.sequences("train")] == [TRAIN_SEQ, OTHER_SEQ]
    args = ["--train-seqs", "1", "--val-seqs", "1", "--frames", "2", "--size", "16x16", "--subframes", "2"]
    assert synth_main(["--out", str(tmp_path / "cli"), *args, "--layout", "svrt"]) == 0
    assert "(svrt layout)" in capsys.readouterr().out
    assert (tmp_path / "cli" / FRAMES / "test_GT_blurred" / TEST_SEQ / "000047.png").is_file()


@pytest.mark.parametrize("split", ["train", "val"])
def test_svrt_layout_reads_what_the_release_reads(svrt_root, gopro_root, split):
    svrt, release = build(svrt_root, split), build(gopro_root, split)
    folder = "test" if split == "val" else split
    seq = svrt.sequences[0]
    assert seq.sharp(0) == svrt_root / FRAMES / f"{folder}_GT" / seq.name / seq.sharp_files[0]
    assert seq.blur(0) == svrt_root / FRAMES / f"{folder}_GT_blurred" / seq.name / seq.blur_files[0]
    assert_same_samples(svrt, release)


def test_separate_roots_from_the_config(svrt_root, gopro_root, make_cfg):
    reference = build_datasets(make_cfg(gopro_root, STATS))
    cfg = make_cfg(svrt_root, {**separate_roots(svrt_root), **STATS})
    assert open_layout(cfg.DATA.ROOT, LayoutOptions.from_config(cfg.DATA)).kind == "roots"
    train, val = build_datasets(cfg)
    assert val.sequences[0].sharp(0).parent.parent.name == "test_GT"  # no val_GT: GoPro's test
    for ours, theirs in zip((train, val), reference):
        assert_same_samples(ours, theirs, [0, len(ours) - 1])
    # S-VRT's dataroot_spike as its option files write it: the split's own folder, no {split}
    literal = {**separate_roots(svrt_root, f"{SPIKES}/train"), "VAL_SPLIT": "train", "SPIKE_SIZE": [16, 20]}
    train, _ = build_datasets(make_cfg(svrt_root, {**literal, **STATS}))
    assert train.sequences[0].spike(0) == svrt_root / SPIKES / "train" / TRAIN_SEQ / "spike" / "000047.dat"
    assert_same_samples(train, reference[0], [0, len(train) - 1])


@pytest.mark.parametrize("data, message", [
    ({"ROOT": "", "GT_ROOT": "/g/{split}", "LQ_ROOT": "/l/{split}"}, "DATA.ROOT is missing: set it in the YAML or "
                                                                    "with --set DATA.ROOT=VALUE (or give DATA.GT_ROOT"),
    ({"GT_ROOT": "/g/{split}"}, "DATA.GT_ROOT and DATA.LQ_ROOT name the sharp and the blurry frames together"),
    ({"GT_ROOT": "/g/train_GT", "LQ_ROOT": "/l/{split}"}, "DATA.GT_ROOT = '/g/train_GT' names one folder for "
                                                          "DATA.TRAIN_SPLIT and DATA.VAL_SPLIT: write {split}"),
])
def test_config_rules_of_the_separate_roots(make_cfg, tmp_path, data, message):
    with pytest.raises(ConfigError) as err:
        make_cfg(tmp_path, data)
    assert str(err.value).startswith(message)
    make_cfg(tmp_path, {"ROOT": "", "GT_ROOT": "/g/{split}", "LQ_ROOT": "/l/{split}", "SPIKE_ROOT": "/s"})  # enough


def write_meta_info(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_meta_info_limits_the_training_split(svrt_root, make_cfg, tmp_path):
    meta = write_meta_info(tmp_path / "meta_info_GoPro_train_GT.txt", f"{OTHER_SEQ} 4 0 88")  # S-VRT's GoPro format
    train, val = build_datasets(make_cfg(svrt_root, {"META_INFO_FILE": str(meta), **STATS}))
    seq, = train.sequences
    assert seq.name == OTHER_SEQ and seq.frames == ("000088", "000089", "000090", "000091")
    assert seq.spike(0).name == "000088.dat" and len(train) == 4 - 3 + 1
    assert len(val.sequences[0].frames) == 6  # without {split} it is the training split's file only
    # With {split}: each split's own file (val reads GoPro's test), KAIR's REDS format with a shape and CRLF.
    write_meta_info(tmp_path / "meta_info_GoPro_test_GT.txt", f"{TEST_SEQ} 3 (32,40,3) 000049\r")
    write_meta_info(tmp_path / "meta_info_GoPro_train_GT.txt", f"{TRAIN_SEQ} 6 (32,40,3) 47", f"{OTHER_SEQ} 3 0 90")
    split_meta = str(tmp_path / "meta_info_GoPro_{split}_GT.txt")
    train, val = build_datasets(make_cfg(svrt_root, {"META_INFO_FILE": split_meta, **STATS}))
    assert [(s.name, s.frames[0], len(s.frames)) for s in train.sequences] == [(TRAIN_SEQ, "000047", 6),
                                                                                (OTHER_SEQ, "000090", 3)]
    assert val.sequences[0].frames == ("000049", "000050", "000051")


def build_error(cfg, *needles) -> None:
    with pytest.raises(DatasetError) as err:
        build_datasets(cfg)
    for needle in needles:
        assert needle in str(err.value)


def test_meta_info_errors_name_the_file_and_the_frames(svrt_root, make_cfg, tmp_path):
    meta = tmp_path / "meta.txt"
    cfg = make_cfg(svrt_root, {"META_INFO_FILE": str(meta), **STATS})
    write_meta_info(meta, f"{TRAIN_SEQ} 10 0 47")
    folder = svrt_root / FRAMES / "train_GT_blurred" / TRAIN_SEQ
    build_error(cfg, f"{meta} lists frames 47-56, but {folder} has no frame 53 (and 3 more)")
    write_meta_info(meta, "GOPR0999_00_00 5 0 1")
    build_error(cfg, f"no frames (.png) in {folder.parent / 'GOPR0999_00_00'} (listed in {meta})")
    write_meta_info(meta, f"{TRAIN_SEQ} 10 0 47", "", f"{OTHER_SEQ} many 0 87")
    build_error(cfg, f"{meta}:3: the frame count and start must be whole numbers")
    meta.unlink()
    build_error(cfg, f"cannot read the meta_info file {meta}")


def test_lmdb_frames_read_what_the_png_frames_hold(svrt_root, svrt_lmdb, make_cfg, capsys):
    db = svrt_lmdb / FRAMES / "train_GT.lmdb"
    assert (db / "meta_info.txt").read_text().splitlines()[0] == f"{TRAIN_SEQ}/000047.png (32,40,3) 1"
    png = svrt_root / FRAMES / "train_GT" / TRAIN_SEQ / "000049.png"
    frame = LmdbFrame(db, f"{TRAIN_SEQ}/000049")
    assert np.array_equal(read_rgb(frame, (32, 40)), read_rgb(png, (32, 40)))
    window = (3, 5, 16, 24)
    assert np.array_equal(read_rgb(frame, (32, 40), window), read_rgb(png, (32, 40), window))
    # Training (random crops) and validation clips, from ROOT's LMDBs and from separate roots (S-VRT appends .lmdb
    # when a root lacks it, and takes a root that has it as it is).
    reference = build_datasets(make_cfg(svrt_root, STATS))
    roots = separate_roots(svrt_lmdb)
    suffixed = {**roots, "GT_ROOT": roots["GT_ROOT"] + ".lmdb"}
    for data in ({}, roots, suffixed):
        train, val = build_datasets(make_cfg(svrt_lmdb, {**data, "IO_BACKEND": "lmdb", **STATS}))
        assert isinstance(train.sequences[0].blur(0), LmdbFrame)
        assert_same_samples(train, reference[0])
        assert_same_samples(val, reference[1])
    status, out = check(capsys, svrt_lmdb, "--io-backend", "lmdb")
    assert status == 0 and "blurry frames in the LMDB" in out, out


def test_lmdb_frames_in_forked_loader_workers(svrt_lmdb, make_cfg):
    """A worker inherits the parent's open LMDB, which LMDB forbids using (and py-lmdb opening again): it reads
    through its own, and the parent's stays usable."""
    train, _ = build_datasets(make_cfg(svrt_lmdb, {"IO_BACKEND": "lmdb", **STATS}))
    first = train[0]["blur"]  # the parent has the databases open before the workers fork
    loader = DataLoader(train, batch_size=2, num_workers=2, multiprocessing_context="fork")
    batches = [batch["blur"] for batch in loader]
    assert len(batches) == 4 and torch.equal(batches[0][0], first) and torch.equal(train[0]["blur"], first)


def test_lmdb_errors_name_the_database_and_the_key(svrt_lmdb, tmp_path):
    db = svrt_lmdb / FRAMES / "train_GT.lmdb"
    with pytest.raises(DatasetError, match=f"{db} has no key {TRAIN_SEQ}/000999"):
        read_rgb(LmdbFrame(db, f"{TRAIN_SEQ}/000999"), (32, 40))
    with pytest.raises(DatasetError, match=f"{tmp_path / 'none.lmdb'} is not a KAIR LMDB"):
        read_rgb(LmdbFrame(tmp_path / "none.lmdb", "a/1"), (32, 40))
    with pytest.raises(DatasetError, match=r"is 32x40, expected 32x41"):
        read_rgb(LmdbFrame(db, f"{TRAIN_SEQ}/000047"), (32, 41))


def test_check_on_svrt_data(svrt_copy, svrt_root, capsys, tmp_path):
    status, out = check(capsys, svrt_root)
    assert status == 0, out
    assert "S-VRT's GoPro layout" in out and [line.split()[:3] for line in out.splitlines()
                                               if line.startswith(("train", "test"))] == [["train", "2", "12"],
                                                                                           ["test", "1", "6"]]
    roots = separate_roots(svrt_root)
    flags = ["--gt-root", roots["GT_ROOT"], "--lq-root", roots["LQ_ROOT"], "--spike-root", roots["SPIKE_ROOT"]]
    status, out = check(capsys, *flags)
    assert status == 0 and "S-VRT's separate roots" in out, out
    meta = write_meta_info(tmp_path / "meta.txt", f"{OTHER_SEQ} 3 0 200")
    status, out = check(capsys, svrt_root, "--meta-info-file", meta)
    assert status == 1 and f"{meta} lists frames 200-202, but {svrt_root / FRAMES / 'train_GT_blurred' / OTHER_SEQ} " \
                           f"has no frame 200 (and 2 more)" in out
    missing = svrt_copy / FRAMES / "test_GT" / TEST_SEQ / "000050.png"
    missing.unlink()
    status, out = check(capsys, svrt_copy)
    assert status == 1 and f"missing in sharp: 000050.png (not in {missing.parent})" in out


def test_check_on_lmdb_names_the_key(svrt_lmdb, capsys):
    db = svrt_lmdb / FRAMES / "test_GT_blurred.lmdb"
    env = lmdb.open(str(db))  # before anything reads it: a process opens an LMDB once
    with env.begin(write=True) as txn:
        txn.put(f"{TEST_SEQ}/000051".encode(), b"not a png")
        txn.delete(f"{TEST_SEQ}/000048".encode())
    env.close()
    status, out = check(capsys, svrt_lmdb, "--io-backend", "lmdb")
    assert status == 1
    assert f"test/{TEST_SEQ}: blur has 5 frames, sharp has 6; missing in blur: 000048 (not in {db} (keys " \
           f"{TEST_SEQ}/*))" in out
    meta = write_meta_info(svrt_lmdb / "meta.txt", f"{TEST_SEQ} 2 0 51")  # the first split's: test
    status, out = check(capsys, svrt_lmdb, "--io-backend", "lmdb", "--meta-info-file", meta, "--splits", "test")
    assert status == 1 and f"unreadable PNG {db} (key {TEST_SEQ}/000051)" in out


def test_bad_data_errors_name_the_file_in_the_svrt_layout(svrt_copy):
    spike = svrt_copy / SPIKES / "train" / TRAIN_SEQ / "spike" / "000049.dat"
    spike.unlink()
    expect_error(svrt_copy, f"train/{TRAIN_SEQ}", "missing spike file", spike)
    shutil.copy(svrt_copy / SPIKES / "train" / TRAIN_SEQ / "spike" / "000048.dat", spike)
    odd = svrt_copy / FRAMES / "train_GT" / OTHER_SEQ / "000089.png"
    Image.new("RGB", (41, 32)).save(odd)
    expect_error(svrt_copy, f"train/{OTHER_SEQ}", odd, "32x41", "one size")
    Image.new("RGB", (40, 32)).save(odd)
    png = svrt_copy / FRAMES / "test_GT_blurred" / TEST_SEQ / "000050.png"
    png.write_bytes(b"not a png")
    expect_error(svrt_copy, "unreadable PNG", png, split="val")
    shutil.rmtree(svrt_copy / FRAMES / "test_GT_blurred")
    shutil.rmtree(svrt_copy / FRAMES / "test_GT")
    expect_error(svrt_copy, f"{svrt_copy / FRAMES / 'val_GT_blurred'} does not exist", "empty split", split="val")


def test_inference_finds_the_svrt_sequences(svrt_root):
    options = LayoutOptions()
    seqs, layout = find_sequences(options, svrt_root, "val")
    assert layout.kind == "svrt" and [s.name for s in seqs] == [TEST_SEQ]
    assert seqs[0].blur == svrt_root / FRAMES / "test_GT_blurred" / TEST_SEQ
    assert seqs[0].sharp == svrt_root / FRAMES / "test_GT" / TEST_SEQ
    assert seqs[0].spikes == svrt_root / SPIKES / "test" / TEST_SEQ
