"""What ``ds-deblur infer`` is built from: a model from any of our checkpoints, sequences read from disk
with the spike input the model was trained on, and whole sequences restored in overlapping temporal windows.

Temporal windows: a sequence of N frames is covered by windows of ``clip_len`` frames that overlap by ``overlap``
frames (default half a clip), placed as VRT's test script places its temporal tiles (``tiling.tile_starts``: stride
``clip_len - overlap``, the last window ending at the last frame); each frame's outputs are blended with weights
that fall towards a window's ends over the overlap (``tiling.blend_ramp``), so a frame gets temporal context on
both sides wherever the sequence has it. A frame is handed out as soon as no later window covers it: memory holds
about two windows, whatever the sequence length. A sequence shorter than a clip runs as one window padded with
repeats of its last frame.

A model with SCFlow (``needs_flow_spike``) also takes ``flow_spike``: per frame of a window, the
DATA.FLOW_SPIKE_SUBFRAMES encoding25 windows of that frame's exposure, frame by frame, from the same place and
resampled to the RGB size the same way as the validation dataset's ``flow_spike`` (``SpikeDeblurDataset``).

Sequences come from a dataset in either layout (``ds_deblur.data.roots``) or from folders given one by one.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch

from ds_deblur.ckpt.weights import Weights, load_into
from ds_deblur.config import Config, load_config, load_stored_config
from ds_deblur.data.dataset import ReprSource
from ds_deblur.data.images import read_rgb
from ds_deblur.data.layout import SequenceInfo, frame_files, image_size
from ds_deblur.data.representations import SpikeRepr, artifact_dir, check_shortest
from ds_deblur.data.roots import DataLayout, LayoutOptions, SequenceDirs, open_layout, sequence_dirs_of
from ds_deblur.data.spike_io import dat_frame_count
from ds_deblur.data.voxel import STATS_FILE, VoxelStats, resample_window, voxelize_dat
from ds_deblur.errors import DatasetError, InferenceError
from ds_deblur.inference.tiling import blend_ramp, tile_starts
from ds_deblur.models import build_model

# (T,3,H,W), (T,C,H,W), flow_spike (T*S,25,H,W) or None -> (T,3,H,W)
ClipForward = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


# --- the model ---------------------------------------------------------------------------------------------------

def build_from(weights: Weights, path: Path, config: Optional[Path] = None) -> tuple[torch.nn.Module, Config]:
    """The model of ``weights`` (``ds_deblur.ckpt.weights.read_weights``) loaded strictly; ``config`` (a run's
    config.yaml) replaces the stored config."""
    if config is None and weights.config is None:
        raise InferenceError(f"{path} ({weights.what}) holds no model config: pass --config RUN_DIR/config.yaml of "
                             f"the run it came from (or use last.pth / best.pth, which carry it)")
    cfg = load_config(config) if config is not None else load_stored_config(weights.config)
    model = build_model(cfg)
    load_into(model, weights, path)
    return model.eval(), cfg


# --- the spike input -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpikeInput:
    """How a frame's spike stream becomes the model's input: sensor size, bins, normalisation, and the
    representation (``spec``; None: the log1p voxel of ``k`` bins), as in training (``SpikeDeblurDataset``);
    ``flow``: the encoding25 windows of SCFlow's ``flow_spike`` for a model that takes them, else None."""
    size: tuple[int, int]
    k: int
    mean: float
    std: float
    spec: Optional[SpikeRepr] = None
    flow: Optional[SpikeRepr] = None


def spike_input(cfg: Config, recorded: Optional[dict], data: Optional[DataLayout],
                mean: Optional[float] = None, std: Optional[float] = None, needs_flow: bool = False) -> SpikeInput:
    """The spike input of the checkpoint, checked against the dataset ``data`` (what its files record).
    ``needs_flow``: the model takes SCFlow's ``flow_spike`` (its ``needs_flow_spike``), the encoding25 windows
    DATA.FLOW_SPIKE_DT and FLOW_SPIKE_SUBFRAMES describe, as training builds them (``loader.build_datasets``).

    Sensor size: what the data records (meta.yaml, or the release's config.yaml), which must agree with what the
    checkpoint was trained on; else the checkpoint's. Mean/std: given, else the checkpoint's, else its config's,
    else voxel_stats.json of the data or of the training data (the voxel), or none (S-VRT's representations)."""
    recorded = recorded or {}
    trained = recorded.get("size") or cfg.DATA.SPIKE_SIZE or training_layout(cfg).recorded_spike_size()
    here = data.recorded_spike_size() if data is not None else None
    if here is not None and trained is not None and tuple(here) != tuple(trained):
        raise InferenceError(f"the checkpoint was trained on spike size {list(trained)} but the data at {data.root} "
                             f"records {list(here)}: the spike streams do not match this model")
    size = here or trained
    if size is None:
        where = data.root if data is not None else "ROOT"
        raise InferenceError(f"spike sensor size unknown: add spike_size: [H, W] to {where}/meta.yaml (the release "
                             f"records spike_h/spike_w in GOPRO_Large_spike_seq/config.yaml)")
    if recorded.get("k") not in (None, cfg.DATA.K):
        raise InferenceError(f"the checkpoint records {recorded['k']} spike bins but its config says {cfg.DATA.K}")
    spec = None if cfg.DATA.SPIKE_REPR == "voxel" else SpikeRepr.from_config(cfg.DATA)
    if mean is None or std is None:
        mean, std = _recorded_stats(cfg, recorded, data)
    flow = SpikeRepr.flow_from_config(cfg.DATA) if needs_flow else None
    return SpikeInput((int(size[0]), int(size[1])), cfg.DATA.K, float(mean), float(std), spec, flow)


def training_layout(cfg: Config) -> DataLayout:
    """The dataset the checkpoint's config trained on (it may not exist on this machine)."""
    return open_layout(cfg.DATA.ROOT, LayoutOptions.from_config(cfg.DATA))


def _recorded_stats(cfg: Config, recorded: dict, data: Optional[DataLayout]) -> tuple[float, float]:
    if recorded.get("mean") is not None:
        return recorded["mean"], recorded["std"]
    if cfg.DATA.NORM.MEAN is not None:
        return cfg.DATA.NORM.MEAN, cfg.DATA.NORM.STD
    if cfg.DATA.SPIKE_REPR != "voxel":
        return 0.0, 1.0  # as the training loader (``loader.spike_normalisation``)
    for layout in (data, training_layout(cfg)):
        stats = VoxelStats.load(layout.stats_dir, cfg.DATA.K) if layout and layout.stats_dir.is_dir() else None
        if stats is not None:
            return stats.mean, stats.std
    raise InferenceError(f"the spike normalisation the model was trained with is unknown: pass --spike-mean and "
                         f"--spike-std, or put the training data's {STATS_FILE} in the data root")


# --- sequences -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sequence(SequenceInfo):
    """One sequence to restore: blur frames with a spike file each (``.dat``, the voxel cache, or the artifact of
    the representation, read as in training: ``source``; likewise ``flow_source`` for SCFlow's encoding25 windows
    when the model takes them), and sharp frames for all of them or none."""
    has_sharp: bool = False
    source: Optional[ReprSource] = None
    flow_source: Optional[ReprSource] = None


def find_sequences(options: LayoutOptions, root: Optional[Path] = None, split: str = "val",
                   folders: tuple[Path, ...] = ()) -> tuple[list[SequenceDirs], Optional[DataLayout]]:
    """Every sequence of ``split`` of the dataset at ``root`` (either layout), or the sequence ``folders`` given
    one by one; and the dataset they belong to (whose files record the spike sensor size), if any."""
    if root is not None:
        layout = open_layout(root, options)
        seqs = layout.sequences(split)
        if not seqs:
            raise InferenceError(f"{layout.frames_dir(split)} has no sequence folders (expected "
                                 f"{layout.frames_dir(split)}/SEQ/blur/*.png; {layout.describe()})")
        return seqs, layout
    missing = [p for p in folders if not p.is_dir()]
    if missing:
        raise InferenceError(f"--input {missing[0]} is not a folder")
    found = [sequence_dirs_of(p, options) for p in folders]
    return [seq for seq, _ in found], found[0][1]


def open_sequence(dirs: SequenceDirs, spike: SpikeInput, options: LayoutOptions = LayoutOptions()) -> Sequence:
    """Check a sequence (blur frames, a spike file per frame for each input the model takes, spike streams long
    enough for them, sharp frames all or none) and index it."""
    blur_dir = dirs.blur
    blur, _ = frame_files(blur_dir, options.image_exts)
    if not blur:
        raise InferenceError(f"{blur_dir} has no frames ({'/'.join(options.image_exts)}) (expected "
                             f"NNNNNN.png frames, e.g. SEQ/blur/NNNNNN.png)")
    spikes = dirs.spikes / options.spike_dir
    # Each input comes from a frame's .dat or from its precomputed file in the input's own folder.
    precomputed = {"spike input": dirs.spikes / options.voxel_dir if spike.spec is None
                   else artifact_dir(dirs.spikes, spike.spec)}
    if spike.flow is not None:
        precomputed["flow network's input"] = artifact_dir(dirs.spikes, spike.flow)
    for what, folder in precomputed.items():
        cached = _cached_names(folder)
        missing = [n for n in blur if not (spikes / f"{n}.dat").is_file() and n not in cached]
        if missing:
            raise InferenceError(f"{dirs.frames}: {len(missing)} frame(s) have no spike file, e.g. "
                                 f"{spikes / missing[0]}.dat, nor the {what} in {folder}; every blurry frame "
                                 f"needs its spike stream")
    sharp, _ = frame_files(dirs.sharp, options.image_exts)
    has_sharp = all(n in sharp for n in blur)
    try:
        size = image_size(blur_dir / next(iter(blur.values())), verify=False)
    except (OSError, ValueError, SyntaxError) as err:
        raise DatasetError(f"cannot read {blur_dir / next(iter(blur.values()))} ({err})") from err
    seq = Sequence(dirs.name, dirs.frames, tuple(blur), size, tuple(blur.values()),
                   tuple(sharp[n] for n in blur) if has_sharp else (), dirs.spikes, options.spike_dir,
                   options.voxel_dir, has_sharp, blur_dir=dirs.blur, sharp_dir=dirs.sharp)
    seq = replace(seq, source=None if spike.spec is None else ReprSource.find(seq, spike.spec),
                  flow_source=None if spike.flow is None else ReprSource.find(seq, spike.flow))
    _check_stream_lengths(seq, spike.size)
    return seq


def _cached_names(folder: Path) -> set[str]:
    """Stems of the files in a voxel cache or artifact folder (none when it does not exist)."""
    return {p.stem for p in folder.iterdir()} if folder.is_dir() else set()


def _check_stream_lengths(seq: Sequence, spike_size: tuple[int, int]) -> None:
    """A representation computed from the .dat files that the sequence's shortest stream cannot give (e.g. too
    few frames for a 25-frame encoding25 window) fails before the first frame runs, naming that stream, as the
    training dataset fails at construction. Only the file sizes are read."""
    computed = [source.spec for source in (seq.source, seq.flow_source) if source is not None and source.fmt is None]
    if not computed:
        return
    counts = [dat_frame_count(seq.spike(i), spike_size) for i in range(len(seq.frames))]
    for spec in computed:
        try:
            check_shortest([spec], counts, seq.spike)
        except DatasetError as err:
            raise InferenceError(f"cannot make the model's {spec.name} input: {err}") from None


class Frame(NamedTuple):
    """A frame's model inputs: blur (3,H,W) in [0,1], the normalised spike input (C,H,W), and for a model with
    SCFlow its encoding25 windows (S,25,H,W) (else None)."""
    blur: torch.Tensor
    spike: torch.Tensor
    flow_spike: Optional[torch.Tensor] = None


def load_frame(seq: Sequence, i: int, spike: SpikeInput) -> Frame:
    """The model inputs of frame ``i``, each read from the whole spike grid and resampled to the frame's size."""
    blur = read_frame(seq.blur(i), seq.size)
    grid = (0, 0, *spike.size)
    if seq.source is not None:
        vox = seq.source.read(seq, i, spike.size, grid)
    elif seq.spike(i).is_file():
        vox = voxelize_dat(seq.spike(i), spike.size, spike.k)
    else:
        vox = np.load(seq.voxel(i), mmap_mode="r")
        if vox.shape[0] != spike.k:
            raise InferenceError(f"{seq.voxel(i)} holds {vox.shape[0]} spike bins; the model takes DATA.K = {spike.k}")
    whole_frame = (0, 0, *seq.size)
    vox = resample_window(vox, seq.size, whole_frame)
    flow = None
    if seq.flow_source is not None:
        windows = resample_window(seq.flow_source.read(seq, i, spike.size, grid), seq.size, whole_frame)
        flow = torch.from_numpy(windows.reshape(-1, *windows.shape[-3:]))  # (25,H,W) of one window -> (1,25,H,W)
    return Frame(blur, torch.from_numpy((vox - spike.mean) / spike.std), flow)


def read_frame(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """A frame as float32 (3, H, W) in [0, 1]; it must be ``size``."""
    return torch.from_numpy(read_rgb(path, size).transpose(2, 0, 1).astype(np.float32) / 255.0)


# --- whole sequences -----------------------------------------------------------------------------------------------

def window_starts(num_frames: int, clip_len: int, overlap: Optional[int] = None) -> list[int]:
    """First frames of the temporal windows: ``overlap`` frames shared (default half a clip); one window for a
    short sequence."""
    overlap = clip_len // 2 if overlap is None else overlap
    return tile_starts(num_frames, clip_len, overlap) if num_frames > clip_len else [0]


FrameLoader = Callable[[Sequence, int, SpikeInput], Frame]  # load_frame's signature


def restore_sequence(seq: Sequence, spike: SpikeInput, forward: ClipForward, clip_len: int,
                     overlap: Optional[int] = None, load: Optional[FrameLoader] = None
                     ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield (frame index, restored (3,H,W) float32) for every frame of ``seq``, in order, each exactly once.
    Windows of ``clip_len`` frames overlap by ``overlap`` (default half a clip); frames are read by ``load``
    (default ``load_frame``), each once, in increasing order. ``forward`` gets a window's blur and spike input
    and, when ``spike.flow`` asks for it, the encoding25 windows of its frames, frame by frame."""
    load = load or load_frame
    n = len(seq.frames)
    overlap = clip_len // 2 if overlap is None else overlap
    starts = window_starts(n, clip_len, overlap)
    ramp = blend_ramp(clip_len, overlap, torch.device("cpu"))
    inputs: dict[int, Frame] = {}
    sums: dict[int, torch.Tensor] = {}
    weights: dict[int, float] = {}
    for w, start in enumerate(starts):
        index = [min(start + j, n - 1) for j in range(clip_len)]  # a short sequence repeats its last frame
        for i in index:
            if i not in inputs:
                inputs[i] = load(seq, i, spike)
        frames = [inputs[i] for i in index]
        flow = None if spike.flow is None else torch.cat([f.flow_spike for f in frames])
        out = forward(torch.stack([f.blur for f in frames]), torch.stack([f.spike for f in frames]), flow)
        for j in range(min(clip_len, n - start)):
            i = start + j
            sums[i] = sums[i] + out[j] * ramp[j] if i in sums else out[j] * ramp[j]
            weights[i] = weights.get(i, 0.0) + float(ramp[j])
        done_before = starts[w + 1] if w + 1 < len(starts) else n
        for i in [i for i in sorted(sums) if i < done_before]:
            inputs.pop(i, None)
            yield i, sums.pop(i) / weights.pop(i)
