"""Spike camera ``.dat`` streams (docs/data.md).

Format: no header; a sequence of frames, each H*W bits in row-major order, 8 pixels per byte with the
least-significant bit first, and each frame stored upside down (rows flipped on read and on write). A frame
takes ceil(H*W / 8) bytes: for the real sensors H*W is a multiple of 8 and frames are back to back; for other
sizes the last byte of each frame is zero-padded so that every frame starts on a byte boundary.

The readers give frames upright: the same (T, H, W) as SpikeCV's ``get_spike_matrix(flipud=True)``, which is how
S-VRT reads the GoPro spike release (tests/data/test_representations.py holds the two against each other).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from ds_deblur.errors import DatasetError

PathLike = Union[str, os.PathLike]


def frame_bytes(spike_size: Sequence[int]) -> int:
    """Bytes one spike frame of size (H, W) takes in a ``.dat`` file."""
    height, width = spike_size
    return (height * width + 7) // 8


def dat_frame_count(path: PathLike, spike_size: Sequence[int]) -> int:
    """Number of spike frames in ``path``; a file that is empty or not a whole number of frames is an error."""
    size = os.path.getsize(path)
    per_frame = frame_bytes(spike_size)
    if size == 0 or size % per_frame:
        height, width = spike_size
        below = size // per_frame
        nearest = f"{below * per_frame} ({below} frames) or " if below else ""
        raise DatasetError(
            f"{path}: size {size} bytes is not a whole number of {height}x{width} spike frames; expected a "
            f"non-zero multiple of {per_frame} bytes, e.g. {nearest}{(below + 1) * per_frame} ({below + 1} frames). "
            f"The file is truncated, or DATA.SPIKE_SIZE / meta.yaml spike_size is wrong.")
    return size // per_frame


def open_dat(path: PathLike, spike_size: Sequence[int]) -> np.ndarray:
    """Memory-map ``path`` as packed frames: uint8 array (N, frame_bytes), nothing read yet."""
    count = dat_frame_count(path, spike_size)
    return np.memmap(path, dtype=np.uint8, mode="r", shape=(count, frame_bytes(spike_size)))


def read_bands(path: PathLike, offsets: Sequence[int], length: int) -> np.ndarray:
    """``length`` bytes at each of ``offsets`` in ``path``: uint8 (len(offsets), length). Plain unbuffered reads
    of exactly those bytes (nothing else of the file is touched, and the OS's read counters see every byte)."""
    out = np.empty((len(offsets), length), np.uint8)
    with open(path, "rb", buffering=0) as f:
        for row, offset in zip(out, offsets):
            f.seek(offset)
            if f.readinto(row) != length:
                raise DatasetError(f"{path}: ended before byte {offset + length}; the file is truncated")
    return out


def rows_are_bytes(spike_size: Sequence[int]) -> bool:
    """Whether each row of a frame takes whole bytes (W a multiple of 8, as for every real sensor), so that a
    window's rows and columns can be read and unpacked alone."""
    return spike_size[1] % 8 == 0


def read_dat_window(path: PathLike, spike_size: Sequence[int], rows: tuple[int, int],
                    columns: tuple[int, int], frames: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The packed bits of rows [r0, r1) and the bytes holding columns [c0, c1) of every frame (or of the frames
    [f0, f1)), upright: uint8 (N, r1 - r0, B) whose bit 0 is column ``8 * (c0 // 8)``. Reads only those rows of
    each frame (the rows are stored upside down, so the window's rows are ``H - r1 .. H - r0`` in the file). Needs
    ``rows_are_bytes``."""
    height, width = spike_size
    if not rows_are_bytes(spike_size):
        raise ValueError(f"rows of a {height}x{width} frame do not take whole bytes; read whole frames instead")
    row_bytes, per_frame = width // 8, frame_bytes(spike_size)
    (r0, r1), (c0, c1) = rows, columns
    first = (height - r1) * row_bytes
    f0, f1 = frames if frames is not None else (0, dat_frame_count(path, spike_size))
    offsets = [n * per_frame + first for n in range(f0, f1)]
    band = read_bands(path, offsets, (r1 - r0) * row_bytes).reshape(len(offsets), r1 - r0, row_bytes)
    return band[:, ::-1, c0 // 8:(c1 + 7) // 8]


def unpack_frames(packed: np.ndarray, spike_size: Sequence[int]) -> np.ndarray:
    """Packed frames (N, frame_bytes) -> bool spikes (N, H, W), upright (rows un-flipped)."""
    height, width = spike_size
    bits = np.unpackbits(packed, axis=1, count=height * width, bitorder="little")
    return bits.view(bool).reshape(-1, height, width)[:, ::-1]


def read_dat(path: PathLike, spike_size: Sequence[int]) -> np.ndarray:
    """All spike frames of ``path`` as a bool array (N, H, W), upright."""
    return np.ascontiguousarray(unpack_frames(open_dat(path, spike_size), spike_size))


def read_dat_frames(path: PathLike, spike_size: Sequence[int], box: Optional[tuple[int, int, int, int]] = None,
                    frames: Optional[tuple[int, int]] = None) -> np.ndarray:
    """The 0/1 spikes of ``box`` (top, left, height, width; default the whole sensor) of the frames [f0, f1)
    (default all), upright: uint8 (f1 - f0, height, width). With whole-byte rows (every real sensor) only the
    box's rows of those frames are read and only its columns' bytes unpacked."""
    height, width = spike_size
    top, left, box_h, box_w = box if box is not None else (0, 0, height, width)
    count = dat_frame_count(path, spike_size)
    f0, f1 = frames if frames is not None else (0, count)
    if not (0 <= f0 <= f1 <= count and 0 <= top and top + box_h <= height and 0 <= left and left + box_w <= width):
        raise ValueError(f"{path}: frames [{f0}, {f1}) and box {(top, left, box_h, box_w)} are not inside its "
                         f"{count} frames of {height}x{width}")
    if not rows_are_bytes(spike_size):
        packed = np.asarray(open_dat(path, spike_size)[f0:f1])
        spikes = unpack_frames(packed, spike_size)[:, top:top + box_h, left:left + box_w]
        return np.ascontiguousarray(spikes).view(np.uint8)
    packed = read_dat_window(path, spike_size, (top, top + box_h), (left, left + box_w), (f0, f1))
    bits = np.unpackbits(packed, axis=2, bitorder="little")
    return np.ascontiguousarray(bits[:, :, left % 8:left % 8 + box_w])


def write_dat(path: PathLike, spikes: np.ndarray) -> None:
    """Write bool or 0/1 spikes (N, H, W) to ``path`` in the ``.dat`` format (rows flipped, LSB first)."""
    spikes = np.asarray(spikes)
    if spikes.ndim != 3:
        raise ValueError(f"spikes must be (N, H, W), got shape {spikes.shape}")
    if spikes.dtype != bool and not np.isin(spikes, (0, 1)).all():
        raise ValueError("spikes must be bool or hold only 0 and 1")
    flat = spikes[:, ::-1].astype(np.uint8).reshape(spikes.shape[0], -1)
    Path(path).write_bytes(np.packbits(flat, axis=1, bitorder="little").tobytes())
