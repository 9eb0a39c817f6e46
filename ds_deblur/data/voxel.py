"""Spike stream -> voxel grid (docs/data.md).

The exposure's N spike frames are split into K bins of consecutive frames (bin b holds frames
[floor(b*N/K), floor((b+1)*N/K)), so sizes differ by at most one frame when K does not divide N), spikes are
counted per pixel and bin, and the counts go through ``log1p``. These un-normalised log1p counts, at the spike
sensor's resolution, are what the cache stores; ``(x - mean) / std`` and the resize to the RGB size happen at
load time so the statistics and the crop can change without re-preparing.

Training crops (256 pixels of a 720x1280 frame, 360x640 spikes) need about a sixteenth of the sensor: the crop is
taken on the spike grid first (``sensor_window``: the RGB window scaled to the sensor, plus the one-pixel margin of
the bilinear taps), only that part of each stream is read and counted (``voxelize_dat(..., box)``,
``read_voxel_window``), and only it is resized (``resample_window(..., sensor)``). The result is bit-identical
to voxelizing and resizing the whole frame and cropping afterwards.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ds_deblur.errors import DatasetError

from .spike_io import PathLike, open_dat, read_bands, read_dat_window, rows_are_bytes

STATS_FILE = "voxel_stats.json"
# A window (top, left, height, width) in output (RGB) pixels, or a box of the same form on the spike grid.
Window = tuple[int, int, int, int]


class SensorWindow(NamedTuple):
    """The part ``box`` (top, left, height, width) of a spike grid of ``size`` (H, W) that a window needs."""
    size: tuple[int, int]
    box: Window


def bin_edges(num_frames: int, k: int) -> np.ndarray:
    """Frame index where each of the K bins starts, plus the end: (K + 1,) ints."""
    return (np.arange(k + 1) * num_frames) // k


def voxelize_packed(packed: np.ndarray, spike_size: Sequence[int], k: int, source: str = "spike stream") -> np.ndarray:
    """Packed frames (N, frame_bytes) -> log1p spike counts per bin, float32 (K, H, W), upright."""
    height, width = spike_size
    num_frames = packed.shape[0]
    if num_frames < k:
        raise DatasetError(f"{source}: {num_frames} spike frames cannot fill K={k} voxel bins; "
                           f"lower DATA.K to at most {num_frames}")
    packed = np.asarray(packed)  # a plain view of a memmap: slicing it skips np.memmap's per-slice overhead
    edges = bin_edges(num_frames, k)
    counts = np.empty((k, height * width), np.float32)
    # Bin by bin so that only one bin's frames are ever unpacked (a memmap reads just those bytes).
    for b in range(k):
        bits = np.unpackbits(packed[edges[b]:edges[b + 1]], axis=1, count=height * width, bitorder="little")
        counts[b] = bits.sum(axis=0, dtype=np.uint32)
    vox = counts.reshape(k, height, width)[:, ::-1]
    return np.log1p(vox)


def voxelize_dat(path: PathLike, spike_size: Sequence[int], k: int, box: Optional[Window] = None) -> np.ndarray:
    """log1p spike counts of a ``.dat`` file, float32 (K, H, W) at the spike sensor's resolution, or of just its
    ``box`` (K, box height, box width): then only the box's rows are read and only its columns unpacked."""
    if box is None:
        return voxelize_packed(open_dat(path, spike_size), spike_size, k, source=str(path))
    top, left, height, width = box
    if not rows_are_bytes(spike_size):  # rows straddle bytes: count whole frames, then crop
        return np.ascontiguousarray(voxelize_dat(path, spike_size, k)[:, top:top + height, left:left + width])
    packed = read_dat_window(path, spike_size, (top, top + height), (left, left + width))
    num_frames = packed.shape[0]
    if num_frames < k:
        raise DatasetError(f"{path}: {num_frames} spike frames cannot fill K={k} voxel bins; "
                           f"lower DATA.K to at most {num_frames}")
    edges, skip = bin_edges(num_frames, k), left % 8
    counts = np.empty((k, height, width), np.float32)
    for b in range(k):
        bits = np.unpackbits(packed[edges[b]:edges[b + 1]], axis=2, bitorder="little")
        counts[b] = bits[:, :, skip:skip + width].sum(axis=0, dtype=np.uint32)
    return np.log1p(counts)


def read_voxel_window(path: PathLike, box: Window) -> np.ndarray:
    """The ``box`` of a cached voxel (``.npy`` of shape (K, H, W), C order) as float32 (K, h, w), reading only the
    box's rows of each bin."""
    top, left, height, width = box
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        start = f.tell()
    if fortran or len(shape) != 3:
        raise DatasetError(f"{path}: expected a C-ordered (K, H, W) voxel array, got shape {shape}"
                           f"{' in Fortran order' if fortran else ''}; rerun ds-deblur prepare")
    k, _, grid_w = shape
    row = grid_w * dtype.itemsize
    offsets = [start + (b * shape[1] + top) * row for b in range(k)]
    band = read_bands(path, offsets, height * row).view(dtype).reshape(k, height, grid_w)
    return band[:, :, left:left + width].astype(np.float32)


def sensor_window(sensor_size: Sequence[int], out_size: Sequence[int], window: Window) -> SensorWindow:
    """The part of a (sensor_size) spike grid that ``resample_window`` reads to produce ``window`` of its resize
    to ``out_size``: the window itself at equal sizes, its bilinear taps when the sensor is smaller, the whole grid
    when it is larger (area downsampling works on whole frames)."""
    (in_h, in_w), (out_h, out_w) = tuple(sensor_size), tuple(out_size)
    top, left, height, width = window
    if (in_h, in_w) == (out_h, out_w):
        return SensorWindow((in_h, in_w), window)
    if in_h <= out_h and in_w <= out_w:
        r0, r1, _ = _bilinear_taps(in_h, out_h, np.arange(top, top + height))
        c0, c1, _ = _bilinear_taps(in_w, out_w, np.arange(left, left + width))
        box = (int(r0.min()), int(c0.min()), int(r1.max() - r0.min()) + 1, int(c1.max() - c0.min()) + 1)
        return SensorWindow((in_h, in_w), box)
    return SensorWindow((in_h, in_w), (0, 0, in_h, in_w))


def _bilinear_taps(n_in: int, n_out: int, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weight for output pixels ``positions`` of an n_in -> n_out bilinear resize, with the
    convention of torch's ``interpolate(mode='bilinear', align_corners=False)``."""
    src = np.maximum((positions + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(src.astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def _span(start: int, count: int, reverse: bool) -> np.ndarray:
    positions = np.arange(start, start + count)
    return positions[::-1] if reverse else positions


def resample_window(vox: np.ndarray, out_size: Sequence[int], window: Window, hflip: bool = False,
                    vflip: bool = False, sensor: Optional[SensorWindow] = None) -> np.ndarray:
    """The ``window`` of ``vox`` (C, h, w) resized to ``out_size`` (H, W), optionally flipped, as a new
    C-contiguous float32 array (C, window height, window width); more leading dims than C (e.g. S windows of 25
    frames) are resampled alike and kept. ``vox`` is the whole spike grid, or only the part ``sensor.box`` of a grid
    of ``sensor.size`` (what ``sensor_window`` says the window needs).

    Upsampling (spike sensor smaller than RGB) is bilinear and computed only for the window, which equals
    cropping the full bilinear resize but reads just the rows and columns it needs (``vox`` may be a memmap);
    flips just reverse the sampling positions. Downsampling is area averaging of the whole frame, then the crop."""
    if vox.ndim != 3:
        out = resample_window(vox.reshape(-1, *vox.shape[-2:]), out_size, window, hflip, vflip, sensor)
        return out.reshape(*vox.shape[:-2], *out.shape[-2:])
    top, left, win_h, win_w = window
    sensor = sensor or SensorWindow(tuple(vox.shape[-2:]), (0, 0, *vox.shape[-2:]))
    (in_h, in_w), (out_h, out_w) = sensor.size, out_size
    box_top, box_left = sensor.box[:2]
    if (in_h, in_w) == (out_h, out_w):
        crop = vox[:, top - box_top:top - box_top + win_h, left - box_left:left - box_left + win_w]
    elif in_h <= out_h and in_w <= out_w:
        r0, r1, wr = _bilinear_taps(in_h, out_h, _span(top, win_h, vflip))
        c0, c1, wc = _bilinear_taps(in_w, out_w, _span(left, win_w, hflip))
        first = int(r0.min())
        # Only the rows the window needs, as float32; tap indices relative to them.
        part = np.asarray(vox[:, first - box_top:int(r1.max()) + 1 - box_top], dtype=np.float32)
        c0, c1 = c0 - box_left, c1 - box_left
        # Columns first (the smaller intermediate), np.take and in-place updates: several times faster than
        # fancy indexing with temporaries here.
        cols = np.take(part, c0, axis=2)
        cols *= 1 - wc
        cols += np.take(part, c1, axis=2) * wc
        out = np.take(cols, r0 - first, axis=1)
        out *= (1 - wr)[:, None]
        out += np.take(cols, r1 - first, axis=1) * wr[:, None]
        return out
    else:
        if sensor.box != (0, 0, in_h, in_w):
            raise ValueError("downsampling spikes needs the whole grid (sensor_window's box for it)")
        full = F.interpolate(torch.from_numpy(np.asarray(vox, np.float32))[None], size=tuple(out_size), mode="area")
        crop = full[0, :, top:top + win_h, left:left + win_w].numpy()
    crop = crop[:, ::-1 if vflip else 1, ::-1 if hflip else 1]
    return np.array(crop, dtype=np.float32, order="C")  # a copy, never a view of the (memmapped) input


@dataclass(frozen=True)
class VoxelStats:
    """Mean and std of the un-normalised log1p voxel values (scalar over all bins and pixels)."""
    mean: float
    std: float
    k: int
    frames: int
    split: str

    def save(self, root: PathLike) -> Path:
        path = Path(root) / STATS_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, root: PathLike, k: int) -> Optional["VoxelStats"]:
        """The stats in ``root/voxel_stats.json``, or None if there is none; K must match."""
        path = Path(root) / STATS_FILE
        if not path.is_file():
            return None
        try:
            stats = cls(**json.loads(path.read_text()))
        except (ValueError, TypeError) as err:
            raise DatasetError(f"{path}: not a valid voxel stats file ({err}); "
                               f"rewrite it with ds-deblur prepare {root}") from err
        if stats.k != k:
            raise DatasetError(f"{path} was computed for K={stats.k} voxel bins but DATA.K={k}; rerun "
                               f"ds-deblur prepare {root} --k {k} (or set DATA.NORM.MEAN/STD)")
        return stats


def compute_stats(voxels: Iterable[np.ndarray], k: int, split: str) -> VoxelStats:
    """Mean/std over every value of the given log1p voxel grids (accumulated in float64)."""
    total = total_sq = 0.0
    count = frames = 0
    for vox in voxels:
        values = np.asarray(vox, dtype=np.float64)
        total += values.sum()
        total_sq += np.square(values).sum()
        count += values.size
        frames += 1
    if frames == 0:
        raise DatasetError(f"no spike frames in split '{split}' to compute voxel statistics from")
    mean = total / count
    std = math.sqrt(max(total_sq / count - mean * mean, 0.0))
    # A constant stream (e.g. no spikes at all) would divide by zero; 1.0 leaves it merely centred.
    return VoxelStats(mean=float(mean), std=float(std) if std > 1e-6 else 1.0, k=k, frames=frames, split=split)
