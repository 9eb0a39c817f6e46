import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ds_deblur.data import DatasetError, VoxelStats, resample_window, voxelize_dat, write_dat
from ds_deblur.data.voxel import bin_edges, compute_stats, read_voxel_window, sensor_window


def test_binning_against_hand_computation(tmp_path):
    # 10 frames into 4 bins: edges floor(b*10/4) = 0, 2, 5, 7, 10 -> bins of 2, 3, 2, 3 frames.
    assert bin_edges(10, 4).tolist() == [0, 2, 5, 7, 10]
    spikes = np.zeros((10, 2, 3), bool)
    spikes[:, 0, 0] = True               # fires every frame: counts 2, 3, 2, 3
    spikes[[1, 2, 9], 1, 2] = True       # frames 1 (bin 0), 2 (bin 1), 9 (bin 3)
    spikes[[5, 6], 0, 1] = True          # both in bin 2
    write_dat(tmp_path / "s.dat", spikes)
    vox = voxelize_dat(tmp_path / "s.dat", (2, 3), 4)
    counts = np.zeros((4, 2, 3))
    counts[:, 0, 0] = [2, 3, 2, 3]
    counts[[0, 1, 3], 1, 2] = 1
    counts[2, 0, 1] = 2
    assert vox.dtype == np.float32 and vox.shape == (4, 2, 3)
    np.testing.assert_allclose(vox, np.log1p(counts), rtol=1e-6)


def test_fewer_frames_than_bins_is_an_error(tmp_path):
    write_dat(tmp_path / "s.dat", np.ones((3, 4, 4), bool))
    with pytest.raises(DatasetError, match=r"3 spike frames cannot fill K=4"):
        voxelize_dat(tmp_path / "s.dat", (4, 4), 4)


@pytest.mark.parametrize("in_size,out_size", [((18, 32), (36, 64)), ((25, 40), (36, 64)), ((5, 7), (16, 21))])
def test_upsampled_window_equals_crop_of_full_bilinear_resize(in_size, out_size):
    vox = np.random.default_rng(1).random((3, *in_size), dtype=np.float32)
    full = F.interpolate(torch.from_numpy(vox)[None], size=out_size, mode="bilinear", align_corners=False)[0].numpy()
    for window in [(0, 0, *out_size), (3, 5, 10, 12), (out_size[0] - 9, out_size[1] - 7, 9, 7)]:
        top, left, h, w = window
        got = resample_window(vox, out_size, window)
        np.testing.assert_allclose(got, full[:, top:top + h, left:left + w], atol=1e-5)


def test_equal_size_is_a_copy_and_larger_sensor_is_area_averaged():
    vox = np.random.default_rng(2).random((2, 8, 8), dtype=np.float32)
    same = resample_window(vox, (8, 8), (1, 2, 4, 5))
    np.testing.assert_array_equal(same, vox[:, 1:5, 2:7])
    same += 1
    assert not np.shares_memory(same, vox)
    down = resample_window(vox, (4, 4), (0, 0, 4, 4))
    np.testing.assert_allclose(down, vox.reshape(2, 4, 2, 4, 2).mean(axis=(2, 4)), rtol=1e-6)


def test_stats_and_their_file(tmp_path):
    grids = [np.full((2, 3, 3), 1.0), np.full((2, 3, 3), 3.0)]
    stats = compute_stats(grids, k=2, split="train")
    assert (stats.mean, stats.std, stats.frames) == (2.0, 1.0, 2)
    stats.save(tmp_path)
    assert VoxelStats.load(tmp_path, k=2) == stats
    with pytest.raises(DatasetError, match="K=2 .*DATA.K=8"):
        VoxelStats.load(tmp_path, k=8)
    assert VoxelStats.load(tmp_path / "nowhere", k=2) is None


@pytest.mark.parametrize("in_size", [(8, 10), (5, 7), (16, 20)])
def test_flipped_window_is_the_window_flipped(in_size):
    vox = np.random.default_rng(3).random((2, *in_size), dtype=np.float32)
    window = (1, 2, 5, 6)
    plain = resample_window(vox, (8, 10), window)
    for hflip, vflip in [(True, False), (False, True), (True, True)]:
        got = resample_window(vox, (8, 10), window, hflip=hflip, vflip=vflip)
        expected = plain[:, ::-1 if vflip else 1, ::-1 if hflip else 1]
        assert got.flags.c_contiguous
        np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("spike_size,box", [((16, 40), (3, 5, 7, 17)), ((16, 40), (0, 0, 16, 40)),
                                            ((16, 40), (9, 33, 7, 7)), ((9, 13), (2, 3, 4, 5))])
def test_a_box_of_a_dat_equals_the_crop_of_the_whole_voxel(tmp_path, spike_size, box):
    # 16x40: rows of 5 bytes, read alone; 9x13: rows straddle bytes, whole frames are counted then cropped.
    path = tmp_path / "s.dat"
    write_dat(path, np.random.default_rng(4).random((10, *spike_size)) < 0.3)
    top, left, height, width = box
    full = voxelize_dat(path, spike_size, 4)
    got = voxelize_dat(path, spike_size, 4, box)
    assert got.dtype == np.float32 and got.shape == (4, height, width)
    np.testing.assert_array_equal(got, full[:, top:top + height, left:left + width])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_a_box_of_the_voxel_cache_equals_its_crop(tmp_path, dtype):
    vox = np.random.default_rng(5).random((3, 12, 20)).astype(dtype)
    np.save(tmp_path / "v.npy", vox)
    got = read_voxel_window(tmp_path / "v.npy", (2, 7, 5, 9))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vox[:, 2:7, 7:16].astype(np.float32))
    np.save(tmp_path / "f.npy", np.asfortranarray(vox))
    with pytest.raises(DatasetError, match="f.npy.*Fortran order"):
        read_voxel_window(tmp_path / "f.npy", (0, 0, 2, 2))


@pytest.mark.parametrize("in_size,out_size", [((18, 32), (36, 64)), ((25, 40), (36, 64)), ((8, 10), (8, 10)),
                                              ((16, 20), (8, 10))])
def test_the_window_from_the_sensor_part_equals_the_window_from_the_whole_grid(in_size, out_size):
    vox = np.random.default_rng(6).random((2, *in_size), dtype=np.float32)
    for window in [(0, 0, *out_size), (1, 2, 5, 6), (out_size[0] - 5, out_size[1] - 4, 5, 4)]:
        sensor = sensor_window(in_size, out_size, window)
        top, left, height, width = sensor.box
        part = vox[:, top:top + height, left:left + width]
        for hflip, vflip in [(False, False), (True, False), (False, True)]:
            np.testing.assert_array_equal(resample_window(part, out_size, window, hflip, vflip, sensor),
                                          resample_window(vox, out_size, window, hflip, vflip))


def test_a_training_crop_reads_a_sixteenth_of_a_gopro_sensor():
    # GoPro spike: 360x640 spikes under 720x1280 RGB; a 256-pixel crop covers 128x128 spike pixels plus the taps.
    sensor = sensor_window((360, 640), (720, 1280), (301, 517, 256, 256))
    top, left, height, width = sensor.box
    assert sensor.size == (360, 640) and height <= 130 and width <= 130
    assert top <= 301 // 2 and top + height >= (301 + 256) // 2 and left <= 517 // 2
