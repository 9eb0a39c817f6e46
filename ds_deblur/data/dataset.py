"""Clips of consecutive (blur, sharp, spike voxel) frames for training and validation (docs/data.md).

Training clips are every window of ``clip_len`` consecutive frames of a sequence (stride 1, never crossing
sequences), with one random crop and flip shared by blur, sharp and spike. Validation clips cover each sequence
with back-to-back windows, the last one moved back to end at the last frame when the length is not a multiple
of ``clip_len`` (those frames then appear in two clips; ``meta['frames']`` says which), on whole frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import read_rgb
from .layout import Root, SequenceInfo, scan_split
from .roots import open_layout
from .sampler import SampleKey
from .voxel import Window, read_voxel_window, resample_window, sensor_window, voxelize_dat

AUGMENT_STREAM = 1  # keeps augmentation seeds apart from the sampler's (seed, epoch) permutation stream


@dataclass(frozen=True)
class ClipOptions:
    """How clips are cut and augmented; ``crop_size=None`` means whole frames (validation)."""
    clip_len: int
    k: int
    mean: float
    std: float
    crop_size: Optional[int] = None
    hflip: bool = False
    vflip: bool = False
    use_voxel_cache: bool = False
    max_frames: Optional[int] = None
    seed: int = 0


class SpikeDeblurDataset(Dataset):
    """Indexed by a ``SampleKey`` (from the sampler) or a plain clip index (then augmented as epoch 0, position
    = index). A sample is a dict with ``blur`` and ``sharp``
    float32 (T, 3, H, W) in [0, 1], ``spike_vox`` float32 (T, K, H, W) normalised, and ``meta``: ``seq`` (str),
    ``frames`` (T,) int64 frame positions in the sequence, ``pad`` (bool, a sampler's padding sample),
    ``scored`` (T,) bool: the frames metrics count (validation clips overlapping an earlier one repeat frames).

    Construction validates the split (see ``layout.scan_split``) and raises ``DatasetError`` listing every
    problem. Only paths are kept in memory, so worker processes share nothing that grows."""

    def __init__(self, root: Root, split: str, options: ClipOptions, *, training: bool,
                 spike_size: Optional[Sequence[int]] = None) -> None:
        self.root, self.split, self.options, self.training = root, split, options, training
        layout = open_layout(root)
        self.spike_size = layout.spike_size(spike_size)
        scan = scan_split(layout, split, self.spike_size, k=options.k, min_frames=options.clip_len,
                          min_size=options.crop_size if training and options.crop_size else 0,
                          voxel_cache=options.use_voxel_cache)
        scan.raise_if_bad()
        self.sequences: list[SequenceInfo] = scan.sequences
        self.clips = [(s, start) for s, seq in enumerate(self.sequences) for start in self._starts(len(seq.frames))]
        self.first_scored = self._first_scored()

    def _first_scored(self) -> list[int]:
        """Per clip, the first frame it scores: validation clips overlap at a sequence's end, and each frame
        must count once in the metrics, in the first clip that holds it. Training clips score every frame."""
        if self.training:
            return [start for _, start in self.clips]
        firsts, clip_len = [], self.options.clip_len
        for i, (seq, start) in enumerate(self.clips):
            before = self.clips[i - 1] if i else None
            firsts.append(max(start, before[1] + clip_len) if before and before[0] == seq else start)
        return firsts

    def _starts(self, num_frames: int) -> list[int]:
        clip_len = self.options.clip_len
        if self.training:
            return list(range(num_frames - clip_len + 1))
        if self.options.max_frames is not None:
            num_frames = max(min(num_frames, self.options.max_frames), clip_len)
        starts = list(range(0, num_frames - clip_len + 1, clip_len))
        if starts[-1] + clip_len < num_frames:
            starts.append(num_frames - clip_len)
        return starts

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: Union[int, SampleKey]) -> dict:
        if not isinstance(key, SampleKey):
            key = SampleKey(int(key), 0, int(key), False)
        seq_index, start = self.clips[key.index]
        seq = self.sequences[seq_index]
        frames = range(start, start + self.options.clip_len)
        window, hflip, vflip = self._augmentation(key, seq.size)
        flip = (slice(None, None, -1 if vflip else 1), slice(None, None, -1 if hflip else 1))
        sample: dict = {
            "blur": self._images([seq.blur(i) for i in frames], seq.size, window, flip),
            "sharp": self._images([seq.sharp(i) for i in frames], seq.size, window, flip),
            "spike_vox": torch.from_numpy(np.stack([self._voxel(seq, i, window, hflip, vflip) for i in frames])),
        }
        sample["meta"] = {"seq": seq.name, "frames": torch.tensor(list(frames)), "pad": key.pad,
                          "scored": torch.tensor([i >= self.first_scored[key.index] for i in frames])}
        return sample

    def augmentation_rng(self, key: SampleKey) -> np.random.Generator:
        """The sample's own RNG, from (seed, epoch, global position): independent of workers and resume."""
        return np.random.default_rng([self.options.seed, AUGMENT_STREAM, key.epoch, key.position])

    def _augmentation(self, key: SampleKey, size: tuple[int, int]) -> tuple[Window, bool, bool]:
        height, width = size
        crop = self.options.crop_size
        if not self.training or crop is None:
            return (0, 0, height, width), False, False
        rng = self.augmentation_rng(key)
        top, left = int(rng.integers(0, height - crop + 1)), int(rng.integers(0, width - crop + 1))
        hflip, vflip = rng.random() < 0.5, rng.random() < 0.5
        return (top, left, crop, crop), self.options.hflip and hflip, self.options.vflip and vflip

    @staticmethod
    def _images(paths: list, size: tuple[int, int], window: Window, flip: tuple[slice, slice]) -> torch.Tensor:
        """The window of each frame, flipped, as float32 (T, 3, h, w) in [0, 1]. Stays in numpy (one uint8 copy,
        one float pass): torch's intra-op threads only slow such small copies down in the main process."""
        crops = [read_rgb(path, size, window)[flip] for path in paths]
        clip = np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32, order="C")
        clip /= 255.0
        return torch.from_numpy(clip)

    def _voxel(self, seq: SequenceInfo, i: int, window: Window, hflip: bool, vflip: bool) -> np.ndarray:
        """The window's normalised spike voxel: only the part of the stream under the window is read and resized."""
        sensor = sensor_window(self.spike_size, seq.size, window)
        if self.options.use_voxel_cache:
            vox = read_voxel_window(seq.voxel(i), sensor.box)
        else:
            vox = voxelize_dat(seq.spike(i), self.spike_size, self.options.k, sensor.box)
        out = resample_window(vox, seq.size, window, hflip, vflip, sensor)
        out -= self.options.mean
        out /= self.options.std
        return out
