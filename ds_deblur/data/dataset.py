"""Clips of consecutive (blur, sharp, spike input) frames for training and validation (docs/data.md).

Training clips are every window of ``clip_len`` consecutive frames of a sequence (stride 1, never crossing
sequences), with one random crop, flip, rotation and frame order shared by blur, sharp and every spike tensor
(``augment``). Validation clips cover each sequence with back-to-back windows, the last one moved back to end at
the last frame when the length is not a multiple of ``clip_len`` (those frames then appear in two clips;
``meta['frames']`` says which), on whole frames.

The spike input of a frame (``spike_vox``) is the normalised log1p voxel (``voxel``), or one of S-VRT's
representations (``representations.SpikeRepr``: TFP images / 255, raw 0/1 frames), read from S-VRT's precomputed
artifacts where a sequence has their folder and otherwise computed from the ``.dat``; with a flow spike input
(encoding25) the sample also holds ``flow_spike``. Each is taken on the spike grid under the crop and resampled
onto the RGB crop (``voxel.resample_window``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ds_deblur.errors import DatasetError

from .augment import Augmentation, AugmentOptions, check_rotate, draw_augmentation
from .images import read_rgb
from .layout import Root, SequenceInfo, scan_split
from .representations import SpikeRepr, artifact_dir, artifact_path, check_shortest, read_artifact
from .roots import open_layout
from .sampler import SampleKey
from .voxel import read_voxel_window, resample_window, sensor_window, voxelize_dat

AUGMENT_STREAM = 1  # keeps augmentation seeds apart from the sampler's (seed, epoch) permutation stream


@dataclass(frozen=True)
class ClipOptions:
    """How clips are cut and augmented; ``crop_size=None`` means whole frames (validation), else a square size or
    (H, W). ``spike_repr`` None is the voxel (``k`` bins, normalised by ``mean``/``std``, from the cache with
    ``use_voxel_cache``); a tfp/raw_window ``SpikeRepr`` replaces it (normalised by ``mean``/``std`` too, which
    the loader sets to 0/1 unless DATA.NORM says otherwise). ``flow_spike``: an encoding25 ``SpikeRepr`` for the
    sample's ``flow_spike``, or None."""
    clip_len: int
    k: int
    mean: float
    std: float
    crop_size: Optional[Union[int, tuple[int, int]]] = None
    hflip: bool = False
    vflip: bool = False
    use_voxel_cache: bool = False
    max_frames: Optional[int] = None
    seed: int = 0
    rotate: bool = False
    random_reverse: bool = False
    spike_repr: Optional[SpikeRepr] = None
    flow_spike: Optional[SpikeRepr] = None

    @property
    def crop_hw(self) -> Optional[tuple[int, int]]:
        if self.crop_size is None:
            return None
        size = self.crop_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def augment(self) -> AugmentOptions:
        return AugmentOptions(self.hflip, self.vflip, self.rotate, self.random_reverse)


@dataclass(frozen=True)
class ReprSource:
    """Where a sequence's frames get a representation: its artifact files in format ``fmt`` (S-VRT's folder
    beside ``spike/``), or, with ``fmt`` None, computed from each frame's ``.dat``."""
    spec: SpikeRepr
    fmt: Optional[str] = None

    @classmethod
    def find(cls, seq: SequenceInfo, spec: SpikeRepr) -> "ReprSource":
        """The artifacts when the sequence has the folder (in the first format its first frame exists in)."""
        folder = artifact_dir(seq.spike_path, spec)
        if not folder.is_dir():
            return cls(spec)
        for fmt in spec.formats:
            if artifact_path(seq.spike_path, spec, seq.frames[0], fmt).is_file():
                return cls(spec, fmt)
        names = " or ".join(f"{seq.frames[0]}.{fmt}" for fmt in spec.formats)
        raise DatasetError(f"{folder}: no {names} for the sequence's first frame; finish its preparation (ds-deblur "
                           f"prepare) or delete the folder to compute {spec.name} from the .dat files")

    def read(self, seq: SequenceInfo, i: int, spike_size: Sequence[int], box: tuple[int, int, int, int]) -> np.ndarray:
        """Frame ``i``'s values on ``box`` of the spike grid, float32 (..., h, w) as S-VRT's loader makes them."""
        if self.fmt is None:
            stored = self.spec.from_dat(seq.spike(i), spike_size, box)
        else:
            path = artifact_path(seq.spike_path, self.spec, seq.frames[i], self.fmt)
            stored = read_artifact(path, self.spec.shape(spike_size), self.spec.storage_dtypes, box)
        return self.spec.to_float(stored)


@dataclass
class SpikeSources:
    """Per sequence, where its spike input (None: the voxel) and its flow spike input come from."""
    spike: list[Optional[ReprSource]] = field(default_factory=list)
    flow: list[Optional[ReprSource]] = field(default_factory=list)


class SpikeDeblurDataset(Dataset):
    """Indexed by a ``SampleKey`` (from the sampler) or a plain clip index (then augmented as epoch 0, position
    = index). A sample is a dict with ``blur`` and ``sharp`` float32 (T, 3, H, W) in [0, 1], ``spike_vox`` float32
    (T, C, H, W) (the spike input, normalised: C voxel bins, TFP images or raw frames), with a flow spike input
    ``flow_spike`` float32 (T * S, 25, H, W) 0/1 (S-VRT's ``L_flow_spike``: frame by frame, S windows each), and
    ``meta``: ``seq`` (str), ``frames`` (T,) int64 frame positions in the sequence in the sample's order (reversed
    by RANDOM_REVERSE), ``pad`` (bool, a sampler's padding sample), ``scored`` (T,) bool: the frames metrics count
    (validation clips overlapping an earlier one repeat frames).

    Construction validates the split (see ``layout.scan_split``) and raises ``DatasetError`` listing every
    problem. Only paths are kept in memory, so worker processes share nothing that grows."""

    def __init__(self, root: Root, split: str, options: ClipOptions, *, training: bool,
                 spike_size: Optional[Sequence[int]] = None) -> None:
        self.root, self.split, self.options, self.training = root, split, options, training
        layout = open_layout(root)
        self.spike_size = layout.spike_size(spike_size)
        crop = options.crop_hw if training else None
        if crop is not None:
            check_rotate(crop, options.augment)
        voxel = options.spike_repr is None
        scan = scan_split(layout, split, self.spike_size, k=options.k if voxel else 1, min_frames=options.clip_len,
                          min_size=crop[0] if crop and crop[0] == crop[1] else 0,
                          voxel_cache=voxel and options.use_voxel_cache)
        scan.raise_if_bad()
        self.sequences: list[SequenceInfo] = scan.sequences
        if crop is not None and crop[0] != crop[1]:
            self._check_crop_fits(crop)
        self._check_spike_lengths(scan.spike_frames)
        self.sources = SpikeSources(
            [None if voxel else ReprSource.find(seq, options.spike_repr) for seq in self.sequences],
            [ReprSource.find(seq, options.flow_spike) if options.flow_spike else None for seq in self.sequences])
        self.clips = [(s, start) for s, seq in enumerate(self.sequences) for start in self._starts(len(seq.frames))]
        self.first_scored = self._first_scored()

    def _check_crop_fits(self, crop: tuple[int, int]) -> None:
        """The scan checks square crops; a non-square one must fit in height and width separately."""
        small = [f"{self.split}/{seq.name}: frames are {seq.size[0]}x{seq.size[1]}, smaller than the {crop[0]}x"
                 f"{crop[1]} training crop (DATA.CROP_SIZE)" for seq in self.sequences
                 if seq.size[0] < crop[0] or seq.size[1] < crop[1]]
        if small:
            raise DatasetError("\n".join(small))

    def _check_spike_lengths(self, counts: list[int]) -> None:
        """A representation that the shortest spike stream cannot give fails here, naming that stream, rather
        than in the middle of an epoch. ``counts`` are the scan's frame counts, sequence by sequence."""
        specs = [spec for spec in (self.options.spike_repr, self.options.flow_spike) if spec is not None]
        frames = [(seq, i) for seq in self.sequences for i in range(len(seq.frames))]
        if len(counts) == len(frames):  # a voxel cache scan counts no .dat frames
            check_shortest(specs, counts, lambda k: frames[k][0].spike(frames[k][1]))

    def describe_sources(self) -> str:
        """Where the spike inputs come from, in a line: precomputed artifacts or the .dat files."""
        parts = [self._describe(self.options.spike_repr, self.sources.spike, "spike input")]
        if self.options.flow_spike is not None:
            parts.append(self._describe(self.options.flow_spike, self.sources.flow, "flow spike input"))
        return "; ".join(parts)

    def _describe(self, spec: Optional[SpikeRepr], sources: list[Optional[ReprSource]], what: str) -> str:
        if spec is None:
            where = "the voxel cache" if self.options.use_voxel_cache else ".dat files"
            return f"{self.split} {what}: voxel (K={self.options.k}) from {where}"
        found = sum(source.fmt is not None for source in sources)
        if found == len(sources):
            where = f"precomputed {spec.dir_name}/ artifacts"
        elif found == 0:
            where = f".dat files, computed on the fly (no {spec.dir_name}/ artifact folders)"
        else:
            where = (f"precomputed {spec.dir_name}/ artifacts in {found} of {len(sources)} sequences, computed from "
                     f".dat files in the others")
        return f"{self.split} {what}: {spec.name} {list(spec.leading_shape)} from {where}"

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
        aug = self._augmentation(key, seq.size)
        frames = aug.order(range(start, start + self.options.clip_len))
        spike = self.sources.spike[seq_index]
        sample: dict = {
            "blur": self._images([seq.blur(i) for i in frames], seq.size, aug),
            "sharp": self._images([seq.sharp(i) for i in frames], seq.size, aug),
            "spike_vox": torch.from_numpy(np.stack([self._spike_input(seq, i, aug, spike) for i in frames])),
        }
        flow = self.sources.flow[seq_index]
        if flow is not None:
            windows = [self._on_crop(flow.read(seq, i, self.spike_size, self._box(seq, aug)), seq, aug)
                       for i in frames]
            sample["flow_spike"] = torch.from_numpy(np.concatenate([w.reshape(-1, *w.shape[-3:]) for w in windows]))
        sample["meta"] = {"seq": seq.name, "frames": torch.tensor(frames), "pad": key.pad,
                          "scored": torch.tensor([i >= self.first_scored[key.index] for i in frames])}
        return sample

    def augmentation_rng(self, key: SampleKey) -> np.random.Generator:
        """The sample's own RNG, from (seed, epoch, global position): independent of workers and resume."""
        return np.random.default_rng([self.options.seed, AUGMENT_STREAM, key.epoch, key.position])

    def _augmentation(self, key: SampleKey, size: tuple[int, int]) -> Augmentation:
        crop = self.options.crop_hw
        if not self.training or crop is None:
            return Augmentation((0, 0, *size))
        return draw_augmentation(self.augmentation_rng(key), size, crop, self.options.augment)

    @staticmethod
    def _images(paths: list, size: tuple[int, int], aug: Augmentation) -> torch.Tensor:
        """The window of each frame, augmented, as float32 (T, 3, h, w) in [0, 1]. Stays in numpy (one uint8 copy,
        one float pass): torch's intra-op threads only slow such small copies down in the main process."""
        crops = [read_rgb(path, size, aug.window)[aug.flip_slices()] for path in paths]
        axes = (0, 3, 2, 1) if aug.transpose else (0, 3, 1, 2)
        clip = np.stack(crops).transpose(axes).astype(np.float32, order="C")
        clip /= 255.0
        return torch.from_numpy(clip)

    def _box(self, seq: SequenceInfo, aug: Augmentation) -> tuple[int, int, int, int]:
        return sensor_window(self.spike_size, seq.size, aug.window).box

    def _on_crop(self, values: np.ndarray, seq: SequenceInfo, aug: Augmentation) -> np.ndarray:
        """Spike values (..., h, w) on the sensor box under the window -> float32 (..., H, W) on the augmented RGB
        crop: resampled like the voxel (flips inside the resampling), then transposed."""
        sensor = sensor_window(self.spike_size, seq.size, aug.window)
        out = resample_window(values, seq.size, aug.window, aug.hflip, aug.vflip, sensor)
        return np.ascontiguousarray(out.swapaxes(-1, -2)) if aug.transpose else out

    def _spike_input(self, seq: SequenceInfo, i: int, aug: Augmentation, source: Optional[ReprSource]) -> np.ndarray:
        """The window's normalised spike input: only the part of the stream under the window is read and resized."""
        box = self._box(seq, aug)
        if source is not None:
            values = source.read(seq, i, self.spike_size, box)
        elif self.options.use_voxel_cache:
            values = read_voxel_window(seq.voxel(i), box)
        else:
            values = voxelize_dat(seq.spike(i), self.spike_size, self.options.k, box)
        out = self._on_crop(values, seq, aug)
        out -= self.options.mean
        out /= self.options.std
        return out
