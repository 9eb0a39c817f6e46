"""What ``python -m ds_deblur.infer`` is built from: a model from any of our checkpoints, sequences read from disk
with the spike input the model was trained on, and whole sequences restored in overlapping temporal windows.

Temporal windows: a sequence of N frames is covered by windows of ``clip_len`` frames that overlap by half a clip;
each frame's outputs are blended with weights that fall towards a window's ends (``tiling.blend_ramp``), so a frame
gets temporal context on both sides wherever the sequence has it. A frame is handed out as soon as no later window
covers it: memory holds about two windows, whatever the sequence length. A sequence shorter than a clip runs as one
window padded with repeats of its last frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from PIL import Image

from ds_deblur.ckpt.weights import Weights, load_into
from ds_deblur.config import Config, load_config
from ds_deblur.data.layout import SPIKE_DIR, VOXEL_DIR, SequenceInfo, read_meta
from ds_deblur.data.voxel import STATS_FILE, VoxelStats, resample_window, voxelize_dat
from ds_deblur.errors import DatasetError, InferenceError
from ds_deblur.models import build_model
from ds_deblur.tiling import blend_ramp, tile_starts

ClipForward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (T,3,H,W), (T,K,H,W) -> (T,3,H,W)


# --- the model ---------------------------------------------------------------------------------------------------

def build_from(weights: Weights, path: Path, config: Optional[Path] = None) -> tuple[torch.nn.Module, Config]:
    """The model of ``weights`` (``ds_deblur.ckpt.weights.read_weights``) loaded strictly; ``config`` (a run's
    config.yaml) replaces the stored config."""
    if config is None and weights.config is None:
        raise InferenceError(f"{path} ({weights.what}) holds no model config: pass --config RUN_DIR/config.yaml of "
                             f"the run it came from (or use last.pth / best.pth, which carry it)")
    cfg = load_config(config if config is not None else weights.config)
    model = build_model(cfg)
    load_into(model, weights, path)
    return model.eval(), cfg


# --- the spike input -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpikeInput:
    """How a frame's spike stream becomes the model's input: sensor size, bins, normalisation."""
    size: tuple[int, int]
    k: int
    mean: float
    std: float


def spike_input(cfg: Config, recorded: Optional[dict], data_root: Optional[Path],
                mean: Optional[float] = None, std: Optional[float] = None) -> SpikeInput:
    """The spike input of the checkpoint, checked against the data at ``data_root`` (its meta.yaml).

    Sensor size: the data's meta.yaml, which must agree with what the checkpoint was trained on; else the
    checkpoint's. Mean/std: given, else the checkpoint's, else its config's, else voxel_stats.json of the data or
    of the training root."""
    recorded = recorded or {}
    trained = recorded.get("size") or cfg.DATA.SPIKE_SIZE or read_meta(cfg.DATA.ROOT).get("spike_size")
    data = read_meta(data_root).get("spike_size") if data_root is not None else None
    if data is not None and trained is not None and tuple(data) != tuple(trained):
        raise InferenceError(f"the checkpoint was trained on spike size {list(trained)} but {data_root}/meta.yaml "
                             f"says {list(data)}: the spike streams do not match this model")
    size = data or trained
    if size is None:
        raise InferenceError(f"spike sensor size unknown: add spike_size: [H, W] to {data_root or 'ROOT'}/meta.yaml")
    if recorded.get("k") not in (None, cfg.DATA.K):
        raise InferenceError(f"the checkpoint records {recorded['k']} spike bins but its config says {cfg.DATA.K}")
    if mean is None or std is None:
        mean, std = _recorded_stats(cfg, recorded, data_root)
    return SpikeInput((int(size[0]), int(size[1])), cfg.DATA.K, float(mean), float(std))


def _recorded_stats(cfg: Config, recorded: dict, data_root: Optional[Path]) -> tuple[float, float]:
    if recorded.get("mean") is not None:
        return recorded["mean"], recorded["std"]
    if cfg.DATA.SPIKE_MEAN is not None:
        return cfg.DATA.SPIKE_MEAN, cfg.DATA.SPIKE_STD
    for root in (data_root, Path(cfg.DATA.ROOT)):
        stats = VoxelStats.load(root, cfg.DATA.K) if root is not None and root.is_dir() else None
        if stats is not None:
            return stats.mean, stats.std
    raise InferenceError(f"the spike normalisation the model was trained with is unknown: pass --spike-mean and "
                         f"--spike-std, or put the training data's {STATS_FILE} in the data root")


# --- sequences -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sequence(SequenceInfo):
    """One folder ``SEQ/{blur,spike|spike_vox}`` (+ optional ``sharp``) of frames with the same names."""
    has_sharp: bool = False


def open_sequence(seq_dir: Path, spike: SpikeInput) -> Sequence:
    """Check a sequence folder (blur frames, a spike file per frame, sharp frames all or none) and index it."""
    blur = sorted(p.stem for p in (seq_dir / "blur").glob("*.png"))
    if not blur:
        raise InferenceError(f"{seq_dir / 'blur'} has no PNG frames (expected SEQ/blur/NNNNNN.png)")
    missing = [n for n in blur if not (seq_dir / SPIKE_DIR / f"{n}.dat").is_file()
               and not (seq_dir / VOXEL_DIR / f"{n}.npy").is_file()]
    if missing:
        raise InferenceError(f"{seq_dir}: {len(missing)} frame(s) have no spike file, e.g. "
                             f"{seq_dir / SPIKE_DIR / missing[0]}.dat; every blurry frame needs its spike stream")
    sharp = [(seq_dir / "sharp" / f"{n}.png").is_file() for n in blur]
    with Image.open(seq_dir / "blur" / f"{blur[0]}.png") as img:
        width, height = img.size
    return Sequence(seq_dir.name, seq_dir, tuple(blur), (height, width), all(sharp))


def load_frame(seq: Sequence, i: int, spike: SpikeInput) -> tuple[torch.Tensor, torch.Tensor]:
    """(blur (3,H,W) in [0,1], normalised spike voxel (K,H,W)) of frame ``i``."""
    blur = read_png(seq.blur(i), seq.size)
    if seq.spike(i).is_file():
        vox = voxelize_dat(seq.spike(i), spike.size, spike.k)
    else:
        vox = np.load(seq.voxel(i), mmap_mode="r")
        if vox.shape[0] != spike.k:
            raise InferenceError(f"{seq.voxel(i)} holds {vox.shape[0]} spike bins; the model takes DATA.K = {spike.k}")
    vox = resample_window(vox, seq.size, (0, 0, *seq.size))
    return blur, torch.from_numpy((vox - spike.mean) / spike.std)


def read_png(path: Path, size: tuple[int, int]) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"cannot read PNG {path} ({err})") from err
    if array.shape[:2] != size:
        raise DatasetError(f"{path} is {array.shape[0]}x{array.shape[1]}, expected {size[0]}x{size[1]} like the "
                           f"first frame of its sequence")
    return torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32) / 255.0)


# --- whole sequences -----------------------------------------------------------------------------------------------

def window_starts(num_frames: int, clip_len: int) -> list[int]:
    """First frames of the temporal windows: half a clip of overlap; one window for a short sequence."""
    return tile_starts(num_frames, clip_len, clip_len // 2) if num_frames > clip_len else [0]


FrameLoader = Callable[[Sequence, int, SpikeInput], tuple[torch.Tensor, torch.Tensor]]  # load_frame's signature


def restore_sequence(seq: Sequence, spike: SpikeInput, forward: ClipForward, clip_len: int,
                     load: Optional[FrameLoader] = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (frame index, restored (3,H,W) float32) for every frame of ``seq``, in order, each exactly once.
    Frames are read by ``load`` (default ``load_frame``), each once, in increasing order."""
    load = load or load_frame
    n = len(seq.frames)
    starts = window_starts(n, clip_len)
    ramp = blend_ramp(clip_len, clip_len // 2, torch.device("cpu"))
    inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    sums: dict[int, torch.Tensor] = {}
    weights: dict[int, float] = {}
    for w, start in enumerate(starts):
        index = [min(start + j, n - 1) for j in range(clip_len)]  # a short sequence repeats its last frame
        for i in index:
            if i not in inputs:
                inputs[i] = load(seq, i, spike)
        out = forward(torch.stack([inputs[i][0] for i in index]), torch.stack([inputs[i][1] for i in index]))
        for j in range(min(clip_len, n - start)):
            i = start + j
            sums[i] = sums[i] + out[j] * ramp[j] if i in sums else out[j] * ramp[j]
            weights[i] = weights.get(i, 0.0) + float(ramp[j])
        done_before = starts[w + 1] if w + 1 < len(starts) else n
        for i in [i for i in sorted(sums) if i < done_before]:
            inputs.pop(i, None)
            yield i, sums.pop(i) / weights.pop(i)
