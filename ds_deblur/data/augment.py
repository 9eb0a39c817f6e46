"""Training augmentation of a clip: one random crop, S-VRT's flips and rotation, and its random reverse
(docs/data.md#augmentations).

S-VRT augments with KAIR's ``utils_video.augment(imgs, use_hflip, use_rot)``: a horizontal flip (``use_hflip``),
then a vertical flip and then a transpose of H and W (each with ``use_rot``; vertical flip + transpose give the
90-degree rotations), each with probability 1/2, applied alike to every image, spike tensor and flow-spike
window of the clip. ``random_reverse`` reverses the clip's frame list for half the clips: frames, targets and
each frame's spike input come in reverse frame order, while each exposure's own spike tensor (TFP bins, raw
window, encoding25 windows) keeps its forward time order, as in S-VRT, which reverses only the frame list.

Decisions come from the sample's own RNG (``SpikeDeblurDataset.augmentation_rng``) in a fixed order, each drawn
whether or not its option is on: the crop's top and left, hflip, vflip (DATA.VFLIP), then ROTATE's vertical flip
and transpose, then the reverse. So configurations without the later options keep their crops and flips bit for
bit, and the draws of a sample never depend on the options of another.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ds_deblur.errors import ConfigError

from .voxel import Window


@dataclass(frozen=True)
class AugmentOptions:
    """Which augmentations are on: DATA.HFLIP, DATA.VFLIP, DATA.ROTATE (S-VRT's use_rot), DATA.RANDOM_REVERSE."""
    hflip: bool = False
    vflip: bool = False
    rotate: bool = False
    reverse: bool = False


@dataclass(frozen=True)
class Augmentation:
    """One sample's augmentation: the ``window`` (top, left, height, width) of each frame it reads, the flips
    applied to that window, then the transpose of H and W, and whether the clip runs in reverse frame order."""
    window: Window
    hflip: bool = False
    vflip: bool = False
    transpose: bool = False
    reverse: bool = False

    def order(self, frames: Sequence[int]) -> list[int]:
        """The clip's frames in the order the sample holds them."""
        return list(frames)[::-1] if self.reverse else list(frames)

    def flip_slices(self) -> tuple[slice, slice]:
        """Index of an (H, W, ...) image that applies the flips."""
        return slice(None, None, -1 if self.vflip else 1), slice(None, None, -1 if self.hflip else 1)

    def spatial(self, array: np.ndarray) -> np.ndarray:
        """``array`` (..., H, W) with the flips, then the transpose (KAIR's order); a view."""
        rows, cols = self.flip_slices()
        out = array[..., rows, cols]
        return out.swapaxes(-1, -2) if self.transpose else out


def check_rotate(crop_hw: Sequence[int], options: AugmentOptions) -> None:
    """ROTATE's transpose turns an H x W crop into W x H, which a batch of crops cannot hold. S-VRT's crops are
    always square (KAIR's ``paired_random_crop`` takes one gt_size), so a non-square crop has no S-VRT meaning."""
    height, width = crop_hw
    if options.rotate and height != width:
        raise ConfigError(f"DATA.ROTATE transposes training crops (S-VRT's use_rot), which turns the {height}x{width} "
                          f"DATA.CROP_SIZE into {width}x{height}: use a square DATA.CROP_SIZE with DATA.ROTATE, or "
                          f"DATA.ROTATE false (DATA.HFLIP and DATA.VFLIP still flip non-square crops)")


def draw_augmentation(rng: np.random.Generator, size: Sequence[int], crop_hw: Sequence[int],
                      options: AugmentOptions) -> Augmentation:
    """A training sample's augmentation for frames of ``size`` (H, W), drawn from ``rng`` in the module's order."""
    (height, width), (crop_h, crop_w) = size, crop_hw
    top, left = int(rng.integers(0, height - crop_h + 1)), int(rng.integers(0, width - crop_w + 1))
    hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
    rotate_vflip, transpose, reverse = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5
    # DATA.VFLIP and ROTATE's vertical flip compose: two flips cancel, and the result is still a fair coin.
    vertical = (options.vflip and vflip) != (options.rotate and rotate_vflip)
    return Augmentation((top, left, crop_h, crop_w), options.hflip and hflip, vertical,
                        options.rotate and transpose, options.reverse and reverse)
