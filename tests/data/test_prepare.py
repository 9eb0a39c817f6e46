import json

import numpy as np
import pytest
import torch

from ds_deblur.data import ClipOptions, SampleKey, SpikeDeblurDataset, VoxelStats
from ds_deblur.data.prepare import main as prepare_main, prepare
from ds_deblur.data.voxel import compute_stats, voxelize_dat


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
