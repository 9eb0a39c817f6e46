"""S-VRT's spike representations written out from their definitions, loop by loop, for the tests to hold
``ds_deblur.data.representations`` against (S-VRT commit 2ac8c0b: data/spike_recc/, its SpikeCV copy, and
scripts/data_preparation/spike*/). Deliberately plain: one window at a time, torch where S-VRT uses torch."""
from __future__ import annotations

import io

import numpy as np
import torch


def spikecv_matrix(raw: bytes, height: int, width: int, flipud: bool = True) -> np.ndarray:
    """SpikeCV's ``get_spike_matrix``: pixel p of the file (row-major over frames, rows, columns) is bit p % 8
    (least significant first) of byte p // 8; frames are H*W/8 bytes back to back; ``flipud`` reverses the rows."""
    data = np.frombuffer(raw, np.uint8)
    frames = len(data) // (height * width // 8)
    out = np.zeros((frames, height, width), bool)
    for t in range(frames):
        for y in range(height):
            for x in range(width):
                p = (t * height + y) * width + x
                out[t, y, x] = (data[p // 8] >> (p % 8)) & 1
    return out[:, ::-1, :] if flipud else out


def tfp(spikes: np.ndarray, num_bins: int, half_win: int) -> np.ndarray:
    """S-VRT's TFP images as uint8 (what ``TFP.spikes2frame`` returns): centres in the middle of equal segments,
    clamped, each image torch's float32 mean of ``spikes[c - hw : c + hw + 1]`` (numpy cuts it at the end) x 255."""
    total = spikes.shape[0]
    if num_bins == 1:
        centres = [total // 2]
    else:
        edges = np.linspace(0, total, num_bins + 1, dtype=int)
        centres = [(edges[i] + edges[i + 1]) // 2 for i in range(num_bins)]
    images = []
    for c in centres:
        c = max(half_win, min(int(c), total - half_win))
        window = torch.from_numpy(np.ascontiguousarray(spikes[c - half_win:c + half_win + 1])).float()
        images.append((window.mean(dim=0) * 255).numpy().astype(np.uint8))
    return np.stack(images)


def raw_window(spikes: np.ndarray, length: int) -> np.ndarray:
    """The ``length`` frames centred at T // 2, as 0/1 uint8."""
    start = spikes.shape[0] // 2 - length // 2
    return spikes[start:start + length].astype(np.uint8)


def encoding25(spikes: np.ndarray, subframes: int) -> np.ndarray:
    """SCFlow's windows of 25 frames: S > 1 centred at Python's round (half to even) of S evenly spaced points
    of [12, T - 13]; S == 1 the middle crop starting at (T - 25) // 2, or for T < 25 the stream padded with copies
    of its first and last frame (S-VRT's default pad_edge), one more after when the padding is odd."""
    total = spikes.shape[0]
    if subframes == 1:
        if total >= 25:
            start = (total - 25) // 2
            return spikes[start:start + 25].astype(np.uint8)
        before = (25 - total) // 2
        after = 25 - total - before
        return np.concatenate([spikes[:1]] * before + [spikes] + [spikes[-1:]] * after).astype(np.uint8)
    low, high = 12, total - 13
    centres = [round(low + i * (high - low) / (subframes - 1)) for i in range(subframes)]
    return np.stack([spikes[c - 12:c + 13] for c in centres]).astype(np.uint8)


def npy_bytes(array: np.ndarray) -> bytes:
    """The bytes ``np.save`` writes for ``array``."""
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()
