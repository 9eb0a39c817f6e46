import json

import numpy as np
import pytest
import torch

from ds_deblur.cli import main as cli_main
from ds_deblur.data import ClipOptions, SampleKey, SpikeDeblurDataset, VoxelStats, write_dat
from ds_deblur.data.prepare import main as prepare_main, prepare
from ds_deblur.data.voxel import compute_stats, voxelize_dat
from support import svrt_spike_reference as ref


def datasets(root, k, mean, std, training):
    opts = dict(clip_len=3, k=k, mean=mean, std=std, crop_size=16 if training else None, hflip=True, vflip=True)
    split = "train" if training else "val"
    return [SpikeDeblurDataset(root, split, ClipOptions(use_voxel_cache=cache, **opts), training=training)
            for cache in (False, True)]


def test_prepare_writes_cache_and_train_stats(tiny_copy, tiny):
    stats = prepare(tiny_copy, k=tiny.k, dtype="float32")
    files = sorted(tiny_copy.glob("*/*/spike_vox/*.npy"))
    assert len(files) == (tiny.synth.train_seqs + tiny.synth.val_seqs) * tiny.synth.frames
    vox = np.load(tiny_copy / "train/seq_001/spike_vox/000002.npy")
    assert vox.dtype == np.float32 and vox.shape == (tiny.k, *tiny.synth.spike_size)
    np.testing.assert_array_equal(vox, voxelize_dat(tiny_copy / "train/seq_001/spike/000002.dat",
                                                    tiny.synth.spike_size, tiny.k))
    train_dats = sorted(tiny_copy.glob("train/*/spike/*.dat"))
    expected = compute_stats((voxelize_dat(p, tiny.synth.spike_size, tiny.k) for p in train_dats), tiny.k, "train")
    assert stats.mean == pytest.approx(expected.mean) and stats.std == pytest.approx(expected.std)
    assert json.loads((tiny_copy / "voxel_stats.json").read_text())["frames"] == len(train_dats)
    assert VoxelStats.load(tiny_copy, tiny.k) == stats


@pytest.mark.parametrize("training", [True, False])
def test_cached_dataset_equals_dat_dataset(tiny_copy, tiny, training):
    stats = prepare(tiny_copy, k=tiny.k, dtype="float32")
    from_dat, from_cache = datasets(tiny_copy, tiny.k, stats.mean, stats.std, training)
    for position in range(len(from_dat)):
        key = SampleKey(position, 1, position, False)
        a, b = from_dat[key], from_cache[key]
        for name in ("blur", "sharp", "spike_vox"):
            assert torch.equal(a[name], b[name]), name


def test_float16_cache_is_close_and_cli_runs(tiny_copy, tiny):
    assert prepare_main([str(tiny_copy), "--k", str(tiny.k), "--workers", "2"]) == 0
    assert np.load(tiny_copy / "val/seq_000/spike_vox/000000.npy").dtype == np.float16
    stats = VoxelStats.load(tiny_copy, tiny.k)
    from_dat, from_cache = datasets(tiny_copy, tiny.k, stats.mean, stats.std, training=False)
    # float16 stores log1p counts (< log(9) here) to 2**-11 relative precision
    np.testing.assert_allclose(from_cache[0]["spike_vox"], from_dat[0]["spike_vox"], atol=3e-3 / stats.std)


def test_cli_reports_bad_data(tiny_copy, tiny, capsys):
    (tiny_copy / "train/seq_000/spike/000003.dat").unlink()
    assert prepare_main([str(tiny_copy), "--k", str(tiny.k)]) == 1
    assert "train/seq_000: missing spike file" in capsys.readouterr().err


def long_exposures(root, spike_size):
    """Rewrite every spike stream of ``root``'s spike tree with 56- or 64-frame exposures (alternating), as the
    representations need; returns the .dat files."""
    dats = sorted(root.glob("GOPRO_Large_spike_seq/*/*/spike/*.dat"))
    rng = np.random.default_rng(5)
    for i, dat in enumerate(dats):
        write_dat(dat, rng.random((56 if i % 2 else 64, *spike_size)) < 0.5)
    return dats


def svrt_tfp_float(s):
    return ref.tfp(s, 4, 20).astype(np.float32) / 255.0


def packed(array):
    return np.packbits(array.astype(bool).reshape(-1), bitorder="little").tobytes()


# arguments, S-VRT's folder, file suffix, S-VRT's stored array of the stream as SpikeCV reads it, file bytes
SVRT_ARTIFACTS = {
    # S-VRT stores uint8 as rint(float32 image / 255 * 255): the uint8 image again
    "tfp": (["--repr", "tfp", "--num-bins", "4", "--half-win-length", "20"], "tfp_b4_hw20", "npy",
            lambda s: np.rint(svrt_tfp_float(s) * 255.0).astype(np.uint8), ref.npy_bytes),
    "tfp_float32": (["--repr", "tfp", "--storage-dtype", "float32"], "tfp_b4_hw20", "npy", svrt_tfp_float,
                    ref.npy_bytes),
    "raw_window": (["--repr", "raw_window", "--window-length", "21"], "raw_window_l21", "npy",
                   lambda s: ref.raw_window(s, 21), ref.npy_bytes),
    "raw_window_float32": (["--repr", "raw_window", "--window-length", "21", "--storage-dtype", "float32"],
                           "raw_window_l21", "npy", lambda s: ref.raw_window(s, 21).astype(np.float32),
                           ref.npy_bytes),
    "encoding25": (["--repr", "encoding25", "--dt", "10", "--subframes", "4"], "encoding25_dt10_s4", "npy",
                   lambda s: ref.encoding25(s, 4).astype(bool), ref.npy_bytes),
    "encoding25_one_float32": (["--repr", "encoding25", "--subframes", "1", "--npy-dtype", "float32"],
                               "encoding25_dt10", "npy", lambda s: ref.encoding25(s, 1).astype(np.float32),
                               ref.npy_bytes),
    "encoding25_packed": (["--repr", "encoding25", "--dt", "7", "--artifact-format", "dat"], "encoding25_dt7_s4",
                          "dat", lambda s: ref.encoding25(s, 4), packed),
}


@pytest.mark.parametrize("name", list(SVRT_ARTIFACTS))
def test_prepare_writes_svrts_artifacts_byte_for_byte(gopro_copy, tiny, name):
    args, folder, suffix, expected, to_bytes = SVRT_ARTIFACTS[name]
    dats = long_exposures(gopro_copy, tiny.synth.spike_size)
    assert prepare_main([str(gopro_copy), *args]) == 0
    assert {d.parts[-4] for d in dats} == {"train", "test"}  # every split of the release
    for dat in dats:
        out = dat.parent.parent / folder / f"{dat.stem}.{suffix}"
        stream = ref.spikecv_matrix(dat.read_bytes(), *tiny.synth.spike_size, flipud=True)
        assert out.read_bytes() == to_bytes(expected(stream)), out
    assert len(list(gopro_copy.glob(f"GOPRO_Large_spike_seq/*/*/{folder}/*"))) == len(dats)


def test_prepare_npz_holds_svrts_key(gopro_copy, tiny):
    dats = long_exposures(gopro_copy, tiny.synth.spike_size)
    assert cli_main(["prepare", str(gopro_copy), "--repr", "tfp", "--format", "npz"]) == 0
    for dat in dats:
        with np.load(dat.parent.parent / "tfp_b4_hw20" / f"{dat.stem}.npz") as data:
            assert list(data) == ["spike_voxel"]
            stream = ref.spikecv_matrix(dat.read_bytes(), *tiny.synth.spike_size)
            np.testing.assert_array_equal(data["spike_voxel"], ref.tfp(stream, 4, 20))


def test_prepare_keeps_existing_artifacts_unless_overwrite(gopro_copy, tiny):
    dats = long_exposures(gopro_copy, tiny.synth.spike_size)
    args = [str(gopro_copy), "--repr", "raw_window", "--window-length", "5"]
    assert prepare_main(args) == 0
    out = dats[0].parent.parent / "raw_window_l5" / f"{dats[0].stem}.npy"
    good = out.read_bytes()
    np.save(out, np.zeros(3, np.uint8))
    assert prepare_main(args + ["--workers", "2"]) == 0 and out.read_bytes() != good
    assert prepare_main(args + ["--overwrite", "--workers", "2"]) == 0 and out.read_bytes() == good


def test_prepare_refuses_a_short_exposure_naming_it(gopro_copy, tiny, capsys):
    long_exposures(gopro_copy, tiny.synth.spike_size)  # then one too short for a half window of 20
    short = sorted(gopro_copy.glob("GOPRO_Large_spike_seq/test/*/spike/*.dat"))[0]
    write_dat(short, np.zeros((40, *tiny.synth.spike_size), bool))
    assert prepare_main([str(gopro_copy), "--repr", "tfp"]) == 1
    err = capsys.readouterr().err
    assert f"{short}: 40 spike frames" in err and "DATA.TFP_HALF_WIN_LENGTH" in err
    assert prepare_main([str(gopro_copy), "--repr", "tfp", "--format", "dat"]) == 1
    assert "tfp artifacts are npy or npz files" in capsys.readouterr().err
