"""S-VRT's augmentations (HFLIP, VFLIP, ROTATE, RANDOM_REVERSE) on frames and every spike tensor alike."""
from pathlib import Path

import numpy as np
import pytest
import torch

from ds_deblur.data import ClipOptions, SampleKey, SpikeDeblurDataset, write_dat
from ds_deblur.data.augment import AugmentOptions, check_rotate, draw_augmentation
from ds_deblur.data.representations import SpikeRepr
from ds_deblur.errors import ConfigError

SIZE = (24, 32)  # RGB and spike grid alike: spikes are copied, not interpolated, so they decode exactly
POSITION_BITS, FRAME_BITS = 10, 3  # 24 * 32 pixels < 2**10; frames < 2**3
EXPOSURE = 25  # spike frames per exposure: one whole encoding25 window


def write_position_spikes(root: Path, frames: int, seq: str = "a") -> None:
    """Spike streams that say where they are: at pixel (r, c) of frame f, spike frame j < 10 holds bit j of
    r * W + c, frames 10..12 hold the bits of f, and the rest are empty."""
    rows, cols = np.mgrid[0:SIZE[0], 0:SIZE[1]]
    for f in range(frames):
        codes = [(rows * SIZE[1] + cols) >> j & 1 for j in range(POSITION_BITS)]
        codes += [np.full(SIZE, f >> j & 1) for j in range(FRAME_BITS)]
        codes += [np.zeros(SIZE, int)] * (EXPOSURE - len(codes))
        write_dat(root / "train" / seq / "spike" / f"{f:06d}.dat", np.stack(codes).astype(bool))


def decode(bits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, column, frame) of each pixel from 0/1 channels (C >= 13, H, W) in the order they were written."""
    bits = bits.round().long()
    weights = 2 ** torch.arange(POSITION_BITS)
    position = (bits[:POSITION_BITS] * weights[:, None, None]).sum(0)
    frame = (bits[POSITION_BITS:POSITION_BITS + FRAME_BITS] * weights[:FRAME_BITS, None, None]).sum(0)
    return position // SIZE[1], position % SIZE[1], frame


@pytest.fixture
def position_root(tmp_path, coded_dataset) -> Path:
    root = coded_dataset(tmp_path, size=SIZE, frames=5)
    write_position_spikes(root, 5)
    return root


def augmented(root: Path, spike_repr: SpikeRepr, subframes: int = 2, **kw) -> SpikeDeblurDataset:
    base = dict(clip_len=3, k=4, mean=0.0, std=1.0, crop_size=16, hflip=True, vflip=True, rotate=True,
                random_reverse=True, seed=5, spike_repr=spike_repr,
                flow_spike=SpikeRepr("encoding25", subframes=subframes))
    options = ClipOptions(**{**base, **kw})
    return SpikeDeblurDataset(root, "train", options, training=True)


# TFP with a zero half window and one image per spike frame is the spike frames themselves (x 255 / 255).
REPRS = [SpikeRepr("raw_window", window_length=EXPOSURE), SpikeRepr("tfp", num_bins=EXPOSURE, half_win=0)]


@pytest.mark.parametrize("spike_repr", REPRS, ids=["raw_window", "tfp"])
def test_every_augmentation_moves_frames_and_spikes_alike(position_root, spike_repr):
    ds = augmented(position_root, spike_repr)
    seen = set()
    for position in range(40):
        sample = ds[SampleKey(position % len(ds), 1, position, False)]
        blur = sample["blur"].mul(255).round().long()
        frames = sample["meta"]["frames"]
        assert torch.equal(blur[:, 2, 0, 0], 10 * frames)  # frame t of the sample is frame frames[t]
        assert sample["flow_spike"].shape == (3 * 2, 25, 16, 16)
        for t in range(3):
            rgb = (blur[t, 0], blur[t, 1], torch.full((16, 16), int(frames[t])))
            for spikes in (sample["spike_vox"][t], *sample["flow_spike"][2 * t:2 * t + 2]):
                for got, want in zip(decode(spikes), rgb):
                    assert torch.equal(got, want)
        rows, cols = blur[0, 0], blur[0, 1]
        transposed = bool(rows[0, 1] != rows[0, 0])  # the row index runs along the width
        across = rows if transposed else cols  # the index that runs along the width
        seen.add((transposed, int(frames[1] - frames[0]), bool(across[0, 1] < across[0, 0])))
    assert {t for t, _, _ in seen} == {False, True} and {d for _, d, _ in seen} == {1, -1}
    assert {f for _, _, f in seen} == {False, True}


def test_spike_time_axis_keeps_its_order_in_a_reversed_clip(position_root):
    # S-VRT reverses the clip's frame list only: each exposure's raw window still runs forward in time.
    ds = augmented(position_root, REPRS[0])
    reversed_keys = [k for k in (SampleKey(0, 0, p, False) for p in range(20)) if ds._augmentation(k, SIZE).reverse]
    sample = ds[reversed_keys[0]]
    assert sample["meta"]["frames"].tolist() == [2, 1, 0]
    empty = sample["spike_vox"][:, POSITION_BITS + FRAME_BITS:]
    assert not empty.any()  # the trailing empty spike frames are still last


def test_options_off_keep_the_sample_untouched(position_root):
    ds = augmented(position_root, REPRS[0], hflip=False, vflip=False, rotate=False, random_reverse=False)
    ds_crop_only = augmented(position_root, REPRS[0])
    for position in range(8):
        key = SampleKey(0, 0, position, False)
        sample, aug = ds[key], ds._augmentation(key, SIZE)
        assert sample["meta"]["frames"].tolist() == [0, 1, 2]
        top, left = aug.window[:2]
        blur = sample["blur"][0].mul(255).round()
        assert torch.equal(blur[0], (torch.arange(16.0) + top)[:, None].expand(16, 16))
        assert torch.equal(blur[1], (torch.arange(16.0) + left)[None].expand(16, 16))
        assert ds_crop_only._augmentation(key, SIZE).window == aug.window  # options never move the crop


def test_new_draws_come_after_the_crop_and_flips():
    # What a config without ROTATE/RANDOM_REVERSE drew before they existed: top, left, hflip, vflip.
    old = AugmentOptions(hflip=True, vflip=True)
    new = AugmentOptions(hflip=True, vflip=False, rotate=True, reverse=True)
    for seed in range(30):
        rng = np.random.default_rng(seed)
        top, left = int(rng.integers(0, 40 - 16 + 1)), int(rng.integers(0, 50 - 16 + 1))
        hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
        aug = draw_augmentation(np.random.default_rng(seed), (40, 50), (16, 16), old)
        assert (aug.window, aug.hflip, aug.vflip, aug.transpose, aug.reverse) == \
            ((top, left, 16, 16), hflip, vflip, False, False)
        assert draw_augmentation(np.random.default_rng(seed), (40, 50), (16, 16), new).window == aug.window


def test_rotate_draws_all_eight_orientations():
    options = AugmentOptions(hflip=True, rotate=True)
    seen = {(a.hflip, a.vflip, a.transpose) for a in
            (draw_augmentation(np.random.default_rng(s), (16, 16), (16, 16), options) for s in range(100))}
    assert len(seen) == 8


def test_rotate_needs_a_square_crop(position_root):
    check_rotate((16, 16), AugmentOptions(rotate=True))
    check_rotate((16, 8), AugmentOptions(hflip=True, vflip=True))
    with pytest.raises(ConfigError, match=r"DATA.ROTATE .* 16x8 DATA.CROP_SIZE into 8x16"):
        augmented(position_root, REPRS[0], crop_size=(16, 8))


def test_rectangular_crop_with_flips_and_reverse(position_root):
    ds = augmented(position_root, REPRS[0], crop_size=(16, 8), rotate=False)
    for position in range(10):
        sample = ds[SampleKey(0, 0, position, False)]
        assert sample["blur"].shape == (3, 3, 16, 8) and sample["spike_vox"].shape == (3, EXPOSURE, 16, 8)
        blur = sample["blur"].mul(255).round().long()
        for t in range(3):
            row, col, _ = decode(sample["spike_vox"][t])
            assert torch.equal(row, blur[t, 0]) and torch.equal(col, blur[t, 1])
