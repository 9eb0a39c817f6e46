import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ds_deblur.data import ClipOptions, SampleKey, SpikeDeblurDataset, read_dat
from ds_deblur.data.voxel import resample_window, voxelize_dat

K = 4  # voxel bins; both test sets have 8 spike frames per exposure


def options(**kw) -> ClipOptions:
    base = dict(clip_len=3, k=K, mean=0.5, std=2.0, crop_size=16, hflip=True, vflip=True, seed=1)
    return ClipOptions(**{**base, **kw})


def test_train_sample_shapes_and_ranges(tiny_root, tiny):
    ds = SpikeDeblurDataset(tiny_root, "train", options(), training=True)
    # 2 sequences of 6 frames, clips of 3 at stride 1 -> 4 clips each
    assert len(ds) == 2 * (tiny.synth.frames - 3 + 1)
    sample = ds[SampleKey(5, 0, 5, False)]
    assert sample["blur"].shape == sample["sharp"].shape == (3, 3, 16, 16)
    assert sample["spike_vox"].shape == (3, K, 16, 16)
    for name in ("blur", "sharp", "spike_vox"):
        assert sample[name].dtype == torch.float32
    assert 0 <= sample["blur"].min() and sample["blur"].max() <= 1
    assert sample["meta"]["seq"] == "seq_001" and sample["meta"]["frames"].tolist() == [1, 2, 3]


def test_val_covers_each_sequence_with_whole_frames(tmp_path, coded_dataset):
    root = coded_dataset(tmp_path, frames=7, seqs=("a", "b"), split="val")
    ds = SpikeDeblurDataset(root, "val", options(), training=False)
    assert ds.clips == [(0, 0), (0, 3), (0, 4), (1, 0), (1, 3), (1, 4)]
    sample = ds[1]
    assert sample["blur"].shape == (3, 3, 24, 32)  # whole frame, no crop
    assert sample["blur"][0, 0, :, 0].mul(255).round().tolist() == list(range(24))  # no flip either
    limited = SpikeDeblurDataset(root, "val", options(max_frames=4), training=False)
    assert limited.clips == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_val_scores_every_frame_exactly_once(tmp_path, coded_dataset):
    root = coded_dataset(tmp_path, frames=7, seqs=("a", "b"), split="val")
    ds = SpikeDeblurDataset(root, "val", options(), training=False)
    scored = []
    for i in range(len(ds)):
        meta = ds[i]["meta"]
        scored += [(meta["seq"], f) for f, s in zip(meta["frames"].tolist(), meta["scored"].tolist()) if s]
    assert sorted(scored) == [(seq, f) for seq in ("a", "b") for f in range(7)]
    train = SpikeDeblurDataset(root, "val", options(), training=True)
    assert all(train[i]["meta"]["scored"].all() for i in range(len(train)))


def test_one_crop_and_flip_shared_by_blur_sharp_and_spike(tmp_path, coded_dataset):
    root = coded_dataset(tmp_path, frames=4, spike_frames=8)
    ds = SpikeDeblurDataset(root, "train", options(k=4), training=True)
    seen_flips = set()
    for position in range(12):
        sample = ds[SampleKey(position % len(ds), 3, position, False)]
        blur = sample["blur"].mul(255).round().long()
        sharp = sample["sharp"].mul(255).round().long()
        rows, cols = blur[0, 0, :, 0], blur[0, 1, 0, :]
        # Every frame of the clip and the sharp target show the very same pixels.
        assert torch.equal(blur[:, :2], sharp[:, :2])
        assert torch.equal(blur[:, 0], rows.view(1, -1, 1).expand(3, 16, 16))
        assert torch.equal(blur[:, 1], cols.view(1, 1, -1).expand(3, 16, 16))
        frames = sample["meta"]["frames"].tolist()
        assert blur[:, 2, 0, 0].tolist() == [10 * f for f in frames]
        assert sharp[:, 2, 0, 0].tolist() == [10 * f + 1 for f in frames]
        row_step, col_step = int(rows[1] - rows[0]), int(cols[1] - cols[0])
        assert abs(row_step) == abs(col_step) == 1
        seen_flips.add((row_step, col_step))
        for t, f in enumerate(frames):
            full = voxelize_dat(root / "train/a/spike" / f"{f:06d}.dat", (24, 32), 4)
            expected = (full[:, rows][:, :, cols] - 0.5) / 2.0
            np.testing.assert_allclose(sample["spike_vox"][t].numpy(), expected, rtol=1e-6)
    assert seen_flips == {(1, 1), (1, -1), (-1, 1), (-1, -1)}


def test_flips_off_and_augmentation_seeded_by_key(tmp_path, coded_dataset):
    root = coded_dataset(tmp_path, frames=4)
    ds = SpikeDeblurDataset(root, "train", options(hflip=False, vflip=False), training=True)
    for position in range(8):
        blur = ds[SampleKey(0, 0, position, False)]["blur"]
        assert (blur[0, 0, 1, 0] > blur[0, 0, 0, 0]) and (blur[0, 1, 0, 1] > blur[0, 1, 0, 0])
    key = SampleKey(1, 2, 5, False)
    a, b = ds[key], ds[key]
    assert torch.equal(a["blur"], b["blur"])
    crops = {tuple(ds[SampleKey(1, 2, p, False)]["blur"][0, :2, 0, 0].tolist()) for p in range(10)}
    assert len(crops) > 1  # a different position draws a different crop


def test_default_collate(tiny_root):
    ds = SpikeDeblurDataset(tiny_root, "train", options(), training=True)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch["blur"].shape == (2, 3, 3, 16, 16) and batch["spike_vox"].shape == (2, 3, K, 16, 16)
    assert batch["meta"]["seq"] == ["seq_000", "seq_000"]
    assert batch["meta"]["frames"].tolist() == [[0, 1, 2], [1, 2, 3]]
    assert batch["meta"]["pad"].tolist() == [False, False]


def test_spike_read_matches_dat_contents(tiny_root, tiny):
    # Whole-frame (validation) voxels at RGB size, summed over bins, count every spike of the stream.
    ds = SpikeDeblurDataset(tiny_root, "val", options(mean=0.0, std=1.0), training=False)
    spikes = read_dat(tiny_root / "val/seq_000/spike/000000.dat", tiny.synth.spike_size)
    assert spikes.shape == (tiny.synth.subframes, *tiny.synth.spike_size)
    vox = voxelize_dat(tiny_root / "val/seq_000/spike/000000.dat", tiny.synth.spike_size, K)
    assert np.expm1(vox).sum() == pytest.approx(spikes.sum(), rel=1e-5)
    assert ds[0]["spike_vox"].shape == (3, K, *tiny.synth.size)


def test_upsampled_spikes_of_a_training_crop_equal_the_whole_frame_path(tiny_root, tiny):
    # The loader reads and resizes only the part of the sensor under the crop; the result is what voxelizing the
    # whole stream, resizing it to the RGB size and cropping gives, bit for bit.
    ds = SpikeDeblurDataset(tiny_root, "train", options(), training=True)
    for position in range(6):
        key = SampleKey(position, 1, position, False)
        window, hflip, vflip = ds._augmentation(key, tiny.synth.size)
        sample = ds[key]
        for t, f in enumerate(sample["meta"]["frames"].tolist()):
            dat = tiny_root / "train" / sample["meta"]["seq"] / "spike" / f"{f:06d}.dat"
            full = voxelize_dat(dat, tiny.synth.spike_size, K)
            expected = (resample_window(full, tiny.synth.size, window, hflip, vflip) - 0.5) / 2.0
            np.testing.assert_array_equal(sample["spike_vox"][t].numpy(), expected)
