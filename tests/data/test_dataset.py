import hashlib

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ds_deblur.data import ClipOptions, DatasetError, SampleKey, SpikeDeblurDataset, read_dat
from ds_deblur.data.representations import SpikeRepr
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
        aug = ds._augmentation(key, tiny.synth.size)
        sample = ds[key]
        for t, f in enumerate(sample["meta"]["frames"].tolist()):
            dat = tiny_root / "train" / sample["meta"]["seq"] / "spike" / f"{f:06d}.dat"
            full = voxelize_dat(dat, tiny.synth.spike_size, K)
            expected = (resample_window(full, tiny.synth.size, aug.window, aug.hflip, aug.vflip) - 0.5) / 2.0
            np.testing.assert_array_equal(sample["spike_vox"][t].numpy(), expected)


def digest(ds: SpikeDeblurDataset, keys) -> str:
    h = hashlib.sha256()
    for key in keys:
        sample = ds[key]
        for name in ("blur", "sharp", "spike_vox"):
            h.update(sample[name].numpy().tobytes())
        h.update(sample["meta"]["frames"].numpy().tobytes())
    return h.hexdigest()[:16]


def test_default_samples_are_those_of_the_voxel_loader_before_the_representations(tiny_root):
    # Digests of what the loader gave before SPIKE_REPR, ROTATE and RANDOM_REVERSE existed (same crops, flips and
    # voxels, bit for bit), so that existing runs resume and compare unchanged.
    train = SpikeDeblurDataset(tiny_root, "train", options(), training=True)
    assert digest(train, [SampleKey(i % len(train), 2, i, False) for i in range(10)]) == "25f8b11dce653778"
    val = SpikeDeblurDataset(tiny_root, "val", options(crop_size=None), training=False)
    assert digest(val, range(len(val))) == "f816ef47658adc1d"


def tfp_by_definition(spikes: np.ndarray, bins: int, half_win: int) -> np.ndarray:
    """S-VRT's TFP (voxelize_spikes_tfp + TFP.spikes2frame): per segment centre, clamped to [hw, T - hw], the
    float32 mean of the frames [c - hw, c + hw] (cut at the end) x 255, truncated to uint8; then / 255."""
    t = spikes.shape[0]
    edges = np.linspace(0, t, bins + 1, dtype=int)
    centres = [max(half_win, min((a + b) // 2, t - half_win)) for a, b in zip(edges[:-1], edges[1:])]
    images = [(spikes[c - half_win:c + half_win + 1].astype(np.float32).mean(0) * np.float32(255)).astype(np.uint8)
              for c in centres]
    return np.stack(images).astype(np.float32) / 255


def raw_by_definition(spikes: np.ndarray, length: int) -> np.ndarray:
    middle = spikes.shape[0] // 2
    return spikes[middle - length // 2:middle + length // 2 + 1].astype(np.float32)


def expected_on_crop(values: np.ndarray, size, aug) -> np.ndarray:
    """The whole spike grid's values resized to the RGB size, cropped, flipped and transposed."""
    out = resample_window(values, size, aug.window, aug.hflip, aug.vflip)
    return out.swapaxes(-1, -2) if aug.transpose else out


SPECS = [(SpikeRepr("tfp", num_bins=K, half_win=1), lambda s: tfp_by_definition(s, K, 1)),
         (SpikeRepr("tfp", num_bins=2, half_win=3), lambda s: tfp_by_definition(s, 2, 3)),
         (SpikeRepr("raw_window", window_length=5), lambda s: raw_by_definition(s, 5))]


@pytest.mark.parametrize("spec, definition", SPECS, ids=["tfp_b4_hw1", "tfp_b2_hw3", "raw_window_l5"])
def test_representations_equal_their_definition_on_the_augmented_crop(tiny_root, tiny, spec, definition):
    # Spikes at half the RGB size: the crop's spike values are upsampled like the voxel's.
    ds = SpikeDeblurDataset(tiny_root, "train", options(spike_repr=spec, mean=0.0, std=1.0, rotate=True,
                                                        random_reverse=True), training=True)
    assert "computed on the fly" in ds.describe_sources()
    for position in range(6):
        key = SampleKey(position, 1, position, False)
        aug, sample = ds._augmentation(key, tiny.synth.size), ds[key]
        assert sample["spike_vox"].shape == (3, spec.leading_shape[0], 16, 16)
        for t, f in enumerate(sample["meta"]["frames"].tolist()):
            spikes = read_dat(tiny_root / "train" / sample["meta"]["seq"] / "spike" / f"{f:06d}.dat",
                              tiny.synth.spike_size)
            expected = expected_on_crop(definition(spikes), tiny.synth.size, aug)
            np.testing.assert_array_equal(sample["spike_vox"][t].numpy(), expected)


def test_artifacts_are_read_when_their_folder_exists(tiny_copy, tiny, capsys):
    # Artifacts that differ from the .dat (inverted TFP images) show that the loader reads them, not the stream.
    spec = SpikeRepr("tfp", num_bins=K, half_win=1)
    for spike_dir in sorted(tiny_copy.glob("*/*/spike")):
        (spike_dir.parent / spec.dir_name).mkdir()
        for dat in spike_dir.glob("*.dat"):
            images = tfp_by_definition(read_dat(dat, tiny.synth.spike_size), K, 1)
            np.save(spike_dir.parent / spec.dir_name / f"{dat.stem}.npy", (255 - images * 255).round().astype(np.uint8))
    ds = SpikeDeblurDataset(tiny_copy, "val", options(spike_repr=spec, mean=0.0, std=1.0), training=False)
    assert "from precomputed tfp_b4_hw1/ artifacts" in ds.describe_sources()
    sample = ds[0]
    spikes = read_dat(tiny_copy / "val/seq_000/spike/000001.dat", tiny.synth.spike_size)
    inverted = (255 - (tfp_by_definition(spikes, K, 1) * 255).round()).astype(np.float32) / 255
    np.testing.assert_array_equal(sample["spike_vox"][1].numpy(),
                                  resample_window(inverted, tiny.synth.size, (0, 0, *tiny.synth.size)))
    next(tiny_copy.glob("val/*/tfp_b4_hw1/000002.npy")).unlink()
    with pytest.raises(DatasetError, match="missing spike artifact .*000002.npy"):
        ds[0]


def test_flow_spike_is_svrt_encoding25_per_frame(tiny_root, tiny):
    # 8 spike frames per exposure: one 25-frame window, padded with the edge frames (S-VRT's short policy).
    flow = SpikeRepr("encoding25", subframes=1)
    ds = SpikeDeblurDataset(tiny_root, "val", options(flow_spike=flow), training=False)
    sample = ds[0]
    assert sample["flow_spike"].shape == (3, 25, *tiny.synth.size) and sample["flow_spike"].dtype == torch.float32
    spikes = read_dat(tiny_root / "val/seq_000/spike/000002.dat", tiny.synth.spike_size)
    padded = np.concatenate([spikes[:1]] * 8 + [spikes] + [spikes[-1:]] * 9).astype(np.float32)
    np.testing.assert_array_equal(sample["flow_spike"][2].numpy(),
                                  resample_window(padded, tiny.synth.size, (0, 0, *tiny.synth.size)))
    with pytest.raises(DatasetError, match="fewer than the 25 of an encoding25 window"):
        SpikeDeblurDataset(tiny_root, "val", options(flow_spike=SpikeRepr("encoding25", subframes=2)), training=False)


def test_too_short_streams_fail_at_construction_naming_a_stream(tiny_root):
    with pytest.raises(DatasetError, match=r"spike/\d+\.dat: 8 spike frames are too few for TFP with half window 4"):
        SpikeDeblurDataset(tiny_root, "train", options(spike_repr=SpikeRepr("tfp", num_bins=K, half_win=4)),
                           training=True)


@pytest.mark.parametrize("spec", [None, SPECS[0][0], SPECS[2][0]], ids=["voxel", "tfp", "raw_window"])
def test_inference_reads_the_spike_input_of_validation(tiny_root, tiny, spec):
    from ds_deblur.data.roots import LayoutOptions
    from ds_deblur.inference.pipeline import SpikeInput, find_sequences, load_frame, open_sequence
    ds = SpikeDeblurDataset(tiny_root, "val", options(spike_repr=spec), training=False)
    spike = SpikeInput(tiny.synth.spike_size, K, 0.5, 2.0, spec)
    dirs, _ = find_sequences(LayoutOptions(), tiny_root, "val")
    seq = open_sequence(dirs[0], spike)
    sample = ds[0]
    for t in range(3):
        np.testing.assert_array_equal(load_frame(seq, t, spike)[1].numpy(), sample["spike_vox"][t].numpy())
