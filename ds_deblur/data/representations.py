"""S-VRT's spike representations of one exposure (docs/data.md#spike-representations), and their artifacts.

The input is the exposure's 0/1 spike frames (T, H, W) as ``spike_io.read_dat`` gives them, which is the
orientation S-VRT's loader works in (SpikeCV's reader with ``flipud=True``: the ``.dat`` stores rows upside down
and both readers turn them upright). Each representation is a per-pixel function of time, so it can be computed on
any crop of the sensor, and it reads only a span of the T frames (``SpikeRepr.span``), so a loader can read just
those bytes.

* ``tfp``: K images, one per equal segment of the exposure: the mean of the 2*hw + 1 frames around the segment's
  centre (clamped to [hw, T - hw]; at T - hw the window runs past the end and is cut there, a frame shorter),
  times 255, truncated to uint8. The arithmetic is float32 ``sum / n * 255``: what torch's CPU mean gives.
* ``raw_window``: the L raw frames centred at T // 2.
* ``encoding25``: S windows of 25 raw frames for the flow network, centred at ``round(linspace(12, T - 13, S))``;
  with S == 1 one window at (T - 1) // 2 (the exposure's middle crop), and a stream shorter than 25 frames padded
  (S-VRT's ``short_policy``). Shape (S, 25, H, W), or (25, H, W) for S == 1.

Artifacts are what S-VRT's preparation scripts write beside a clip's ``spike/`` folder: ``tfp_b{K}_hw{hw}/``,
``raw_window_l{L}/``, ``encoding25_dt{dt}[_s{S}]/``, one file per ``.dat`` of the same stem: ``.npy`` (uint8,
float32 in [0, 1], or for encoding25 bool), ``.npz`` with key ``spike_voxel`` (tfp, raw_window), or for
encoding25 a ``.dat`` of the bits packed least-significant first.
"""
from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ds_deblur.errors import DatasetError

from .spike_io import PathLike, dat_frame_count, read_dat_frames

REPRS = ("tfp", "raw_window", "encoding25")
FORMATS = ("npy", "npz", "dat")
SHORT_POLICIES = ("pad_edge", "pad_zero", "strict")
ENCODING25_LENGTH = 25
NPZ_KEY = "spike_voxel"  # the array's name in S-VRT's .npz artifacts
# A box (top, left, height, width) on the spike grid.
Box = tuple[int, int, int, int]


def tfp_centres(num_frames: int, num_bins: int, half_win: int) -> list[int]:
    """S-VRT's TFP key frames: the middle of each of ``num_bins`` equal segments (``T // 2`` for one), clamped to
    [half_win, T - half_win]. Assumes the caller checked T > 2 * half_win."""
    if num_bins == 1:
        centres = [num_frames // 2]
    else:
        edges = np.linspace(0, num_frames, num_bins + 1, dtype=int)
        centres = [int(start + end) // 2 for start, end in zip(edges[:-1], edges[1:])]
    return [max(half_win, min(c, num_frames - half_win)) for c in centres]


def encoding25_centres(num_frames: int, subframes: int) -> list[int]:
    """Centres of the 25-frame windows: evenly spaced over [12, T - 13], rounded half to even as S-VRT does;
    the middle (T - 1) // 2 for one window. Assumes T >= 25."""
    low, high = ENCODING25_LENGTH // 2, num_frames - ENCODING25_LENGTH // 2 - 1
    if subframes == 1:
        return [(low + high) // 2]
    return [int(c) for c in np.rint(np.linspace(low, high, subframes))]


@dataclass(frozen=True)
class SpikeRepr:
    """One representation with its parameters: ``num_bins``/``half_win`` (tfp), ``window_length`` (raw_window),
    ``dt``/``subframes``/``short_policy`` (encoding25; ``dt`` only names the folder, as in S-VRT)."""
    name: str
    num_bins: int = 4
    half_win: int = 20
    window_length: int = 9
    dt: int = 10
    subframes: int = 4
    short_policy: str = "pad_edge"

    def __post_init__(self) -> None:
        if self.name not in REPRS:
            raise ValueError(f"unknown spike representation {self.name!r}; expected one of {', '.join(REPRS)}")

    @classmethod
    def from_config(cls, data: Any) -> "SpikeRepr":
        """The spike input DATA.SPIKE_REPR (tfp or raw_window) names, with DATA.K, TFP_HALF_WIN_LENGTH and
        RAW_WINDOW_LENGTH."""
        return cls(data.SPIKE_REPR, num_bins=data.K, half_win=data.TFP_HALF_WIN_LENGTH,
                   window_length=data.RAW_WINDOW_LENGTH if data.RAW_WINDOW_LENGTH is not None
                   else 2 * data.TFP_HALF_WIN_LENGTH + 1)

    @classmethod
    def flow_from_config(cls, data: Any) -> "SpikeRepr":
        """The flow network's encoding25 input: DATA.FLOW_SPIKE_DT and FLOW_SPIKE_SUBFRAMES."""
        return cls("encoding25", dt=data.FLOW_SPIKE_DT, subframes=data.FLOW_SPIKE_SUBFRAMES)

    @property
    def dir_name(self) -> str:
        """S-VRT's artifact folder name."""
        if self.name == "tfp":
            return f"tfp_b{self.num_bins}_hw{self.half_win}"
        if self.name == "raw_window":
            return f"raw_window_l{self.window_length}"
        return f"encoding25_dt{self.dt}" + (f"_s{self.subframes}" if self.subframes > 1 else "")

    @property
    def leading_shape(self) -> tuple[int, ...]:
        """The dimensions before (H, W): (K,), (L,), (S, 25) or (25,) for one encoding25 window."""
        if self.name == "tfp":
            return (self.num_bins,)
        if self.name == "raw_window":
            return (self.window_length,)
        return (self.subframes, ENCODING25_LENGTH) if self.subframes > 1 else (ENCODING25_LENGTH,)

    def shape(self, size: Sequence[int]) -> tuple[int, ...]:
        """The representation's shape on a (H, W) grid."""
        return (*self.leading_shape, int(size[0]), int(size[1]))

    def windows(self, num_frames: int, source: str = "spike stream") -> list[tuple[int, int]]:
        """The frame ranges [start, end) each output image or window is made of; raises ``DatasetError`` naming
        ``source`` and the config key when a ``num_frames`` stream cannot give this representation."""
        if self.name == "tfp":
            self._check_tfp(num_frames, source)
            hw = self.half_win
            return [(c - hw, min(c + hw + 1, num_frames)) for c in tfp_centres(num_frames, self.num_bins, hw)]
        if self.name == "raw_window":
            self._check_raw_window(num_frames, source)
            start = num_frames // 2 - self.window_length // 2
            return [(start, start + self.window_length)]
        if self._check_encoding25(num_frames, source):
            half = ENCODING25_LENGTH // 2
            return [(c - half, c + half + 1) for c in encoding25_centres(num_frames, self.subframes)]
        return [(0, num_frames)]  # shorter than a window: the whole stream, padded by ``from_frames``

    def span(self, num_frames: int, source: str = "spike stream") -> tuple[int, int]:
        """The frames [first, end) of the stream the representation reads."""
        windows = self.windows(num_frames, source)
        return min(w[0] for w in windows), max(w[1] for w in windows)

    def from_frames(self, frames: np.ndarray, num_frames: Optional[int] = None, first: int = 0,
                    source: str = "spike stream") -> np.ndarray:
        """The representation, uint8, from 0/1 spike frames (n, H, W): the whole stream, or the frames
        [first, first + n) of a ``num_frames`` stream (at least ``span``)."""
        if frames.ndim != 3:
            raise ValueError(f"spike frames must be (T, H, W), got shape {frames.shape}")
        num_frames = frames.shape[0] if num_frames is None else num_frames
        parts = [frames[start - first:end - first] for start, end in self.windows(num_frames, source)]
        if self.name == "tfp":
            return np.stack([_tfp_image(part) for part in parts])
        if self.name == "encoding25" and num_frames < ENCODING25_LENGTH:
            parts = [_pad_window(parts[0], self.short_policy)]
        out = np.stack(parts).astype(np.uint8)
        return out.reshape(self.shape(frames.shape[1:]))

    def from_dat(self, path: PathLike, spike_size: Sequence[int], box: Optional[Box] = None) -> np.ndarray:
        """The representation of a ``.dat`` stream (or of its ``box``), reading only the frames it needs."""
        num_frames = dat_frame_count(path, spike_size)
        first, end = self.span(num_frames, str(path))
        frames = read_dat_frames(path, spike_size, box, frames=(first, end))
        return self.from_frames(frames, num_frames, first, str(path))

    def to_float(self, stored: np.ndarray) -> np.ndarray:
        """Float32 values as S-VRT's loader makes them of a stored artifact (or of ``from_frames``): integer TFP
        images / 255; everything else as it is (0/1 spikes, float32 TFP already in [0, 1])."""
        stored = np.asarray(stored)
        if self.name == "tfp" and np.issubdtype(stored.dtype, np.integer):
            return stored.astype(np.float32) / np.float32(255.0)
        return stored.astype(np.float32)

    def encode(self, values: np.ndarray, storage_dtype: str) -> np.ndarray:
        """The array S-VRT's scripts store for ``from_frames``'s uint8 output: uint8 as it is, float32 (TFP / 255,
        spikes 0/1), or bool (encoding25's default)."""
        if storage_dtype not in self.storage_dtypes:
            raise ValueError(f"{self.name} artifacts are stored as {' or '.join(self.storage_dtypes)}, "
                             f"not {storage_dtype}")
        if storage_dtype == "float32":
            return self.to_float(values)
        return values.astype(storage_dtype)

    @property
    def storage_dtypes(self) -> tuple[str, ...]:
        """On-disk dtypes, S-VRT's default first."""
        return ("bool", "float32") if self.name == "encoding25" else ("uint8", "float32")

    @property
    def formats(self) -> tuple[str, ...]:
        """File formats S-VRT's script for this representation writes, its default first."""
        return ("npy", "dat") if self.name == "encoding25" else ("npy", "npz")

    def _check_tfp(self, num_frames: int, source: str) -> None:
        if self.num_bins <= 0:
            raise DatasetError(f"TFP needs at least one image per exposure, got K={self.num_bins} (DATA.K)")
        if num_frames <= 2 * self.half_win:
            raise DatasetError(
                f"{source}: {num_frames} spike frames are too few for TFP with half window {self.half_win} "
                f"(DATA.TFP_HALF_WIN_LENGTH), which needs more than {2 * self.half_win}; lower "
                f"DATA.TFP_HALF_WIN_LENGTH to at most {max(num_frames - 1, 0) // 2}")

    def _check_raw_window(self, num_frames: int, source: str) -> None:
        length = self.window_length
        if length <= 0 or length % 2 == 0:
            raise DatasetError(f"the raw spike window must be a positive odd number of frames (centred in the "
                               f"exposure), got {length} (DATA.RAW_WINDOW_LENGTH)")
        if length > num_frames:
            raise DatasetError(f"{source}: {num_frames} spike frames are too few for a raw window of {length} "
                               f"(DATA.RAW_WINDOW_LENGTH); lower it to at most {num_frames - (num_frames + 1) % 2}")

    def _check_encoding25(self, num_frames: int, source: str) -> bool:
        """Whether the stream holds whole 25-frame windows; raises where S-VRT would."""
        if self.subframes < 1:
            raise DatasetError(f"encoding25 needs at least one window per exposure, got {self.subframes} "
                               f"(DATA.FLOW_SPIKE_SUBFRAMES)")
        if num_frames >= ENCODING25_LENGTH:
            return True
        if self.subframes > 1 or self.short_policy == "strict":
            raise DatasetError(f"{source}: {num_frames} spike frames are fewer than the 25 of an encoding25 window "
                               f"(DATA.FLOW_SPIKE_SUBFRAMES {self.subframes}, short policy {self.short_policy})")
        return False


def _tfp_image(frames: np.ndarray) -> np.ndarray:
    """Mean of 0/1 frames x 255 as uint8, in float32 as torch computes ``mean(dim=0) * 255`` on the CPU: the
    count is exact, then one float32 division by n and one multiplication (a reciprocal would differ, e.g. for
    n = 41 and 41 spikes), truncated by the cast."""
    counts = frames.sum(axis=0, dtype=np.uint32).astype(np.float32)
    counts /= np.float32(frames.shape[0])
    counts *= np.float32(255.0)
    return counts.astype(np.uint8)


def _pad_window(frames: np.ndarray, policy: str) -> np.ndarray:
    """A stream shorter than 25 frames padded to 25, the extra split before and after (one more after)."""
    if policy not in SHORT_POLICIES:
        raise ValueError(f"unknown short policy {policy!r}; expected one of {', '.join(SHORT_POLICIES)}")
    missing = ENCODING25_LENGTH - frames.shape[0]
    pad = ((missing // 2, missing - missing // 2), (0, 0), (0, 0))
    return np.pad(frames, pad, mode="edge") if policy == "pad_edge" else np.pad(frames, pad)


def tfp(spikes: np.ndarray, num_bins: int, half_win: int, source: str = "spike stream") -> np.ndarray:
    """S-VRT's TFP images of an exposure's 0/1 spikes (T, H, W): uint8 (K, H, W) with values 0..255."""
    return SpikeRepr("tfp", num_bins=num_bins, half_win=half_win).from_frames(spikes, source=source)


def raw_window(spikes: np.ndarray, length: int, source: str = "spike stream") -> np.ndarray:
    """The ``length`` raw frames centred at T // 2: uint8 (L, H, W) of 0/1."""
    return SpikeRepr("raw_window", window_length=length).from_frames(spikes, source=source)


def encoding25(spikes: np.ndarray, subframes: int, short_policy: str = "pad_edge",
               source: str = "spike stream") -> np.ndarray:
    """SCFlow's encoding25 windows: uint8 (S, 25, H, W) of 0/1, or (25, H, W) for ``subframes`` 1."""
    return SpikeRepr("encoding25", subframes=subframes, short_policy=short_policy).from_frames(spikes, source=source)


def check_shortest(specs: Sequence[SpikeRepr], counts: Sequence[int], stream: Callable[[int], PathLike]) -> None:
    """Each of ``specs`` from the shortest of the spike streams whose frame counts are ``counts``: a
    ``DatasetError`` naming that stream (``stream(index)``) when it cannot give one, before anything is read."""
    if not specs or not counts:
        return
    shortest = int(np.argmin(counts))
    for spec in specs:
        spec.windows(counts[shortest], str(stream(shortest)))


def artifact_dir(spike_seq_dir: PathLike, spec: SpikeRepr) -> Path:
    """A clip's artifact folder beside its ``spike/`` folder, named as S-VRT names it."""
    return Path(spike_seq_dir) / spec.dir_name


def artifact_path(spike_seq_dir: PathLike, spec: SpikeRepr, stem: str, fmt: str = "npy") -> Path:
    """The artifact of the frame ``stem`` (its ``.dat``'s stem) in format ``fmt``."""
    return artifact_dir(spike_seq_dir, spec) / f"{stem}.{fmt}"


def write_artifact(path: PathLike, array: np.ndarray) -> None:
    """Write ``array`` as ``path``'s suffix says (``.npy``, ``.npz`` with key ``spike_voxel``, packed ``.dat``),
    through a temporary file so that a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        if path.suffix == ".npy":
            np.save(f, array)
        elif path.suffix == ".npz":
            np.savez_compressed(f, **{NPZ_KEY: array})
        elif path.suffix == ".dat":
            f.write(np.packbits(array.astype(bool).reshape(-1), bitorder="little").tobytes())
        else:
            raise ValueError(f"{path}: artifacts are .npy, .npz or .dat")
    os.replace(tmp, path)


def read_artifact(path: PathLike, expected_shape: Sequence[int], dtypes: Sequence[str] = ("uint8", "float32"),
                  box: Optional[Box] = None) -> np.ndarray:
    """An artifact as stored (its dtype), or the ``box`` of its last two dimensions (``.npy`` read through a
    memory map: only those bytes). Refuses, with a ``DatasetError`` naming the file, one whose shape is not
    ``expected_shape`` or whose dtype is not among ``dtypes``. A packed ``.dat`` (encoding25) reads as uint8."""
    path = Path(path)
    expected = tuple(int(s) for s in expected_shape)
    if path.suffix == ".dat":
        array = _read_packed(path, expected)
    else:
        array = _load_array(path)
        if array.shape != expected or array.dtype.name not in dtypes:
            raise DatasetError(
                f"{path}: holds a {array.dtype.name} array of shape {array.shape}, expected {' or '.join(dtypes)} "
                f"of shape {expected}; it was prepared with other settings: rerun ds-deblur prepare with these "
                f"(or delete the artifact folder)")
    if box is not None:
        top, left, height, width = box
        array = array[..., top:top + height, left:left + width]
    return np.array(array)  # a copy: never hand out a view of the memory map


def _load_array(path: Path) -> np.ndarray:
    try:
        if path.suffix == ".npz":
            with np.load(path) as data:
                return data[NPZ_KEY]
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise DatasetError(f"missing spike artifact {path}: run ds-deblur prepare ROOT --repr ...") from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as err:
        raise DatasetError(f"{path}: unreadable spike artifact ({err}); rerun ds-deblur prepare") from None


def _read_packed(path: Path, expected: tuple[int, ...]) -> np.ndarray:
    count = int(np.prod(expected))
    want = (count + 7) // 8
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        raise DatasetError(f"missing spike artifact {path}: run ds-deblur prepare ROOT --repr ...") from None
    if size != want:
        raise DatasetError(f"{path}: {size} bytes, expected {want} (packed 0/1 spikes of shape {expected}); it was "
                           f"prepared with other settings: rerun ds-deblur prepare with these")
    bits = np.unpackbits(np.fromfile(path, np.uint8), count=count, bitorder="little")
    return bits.reshape(expected)
