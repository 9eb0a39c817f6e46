"""Deblur whole sequences with a trained checkpoint.

    ds-deblur infer --ckpt outputs/ckpts/best.pth --root data/synth --split val --output results
    ds-deblur infer --ckpt outputs/ckpts --input clips/seq_a clips/seq_b --output results --tile 256
    ds-deblur infer --ckpt best.pth --root GOPRO --split test --output results \
        --tile 18 192 192 --tile-overlap 2 20 20

``--root`` takes a dataset in the unified layout, the GoPro spike release as downloaded (``ROOT/GOPRO_Large`` +
``ROOT/GOPRO_Large_spike_seq``) or S-VRT's layout of it (``GOPRO_Large/test_GT``, ``test_GT_blurred``; frames also
from KAIR LMDBs with ``--io-backend lmdb``); in the last two ``test`` stands in for ``val``. Writes
``OUT/SEQ/STEM.png`` for every blurry input frame (same stem and size) and, when the sequences have sharp frames,
``OUT/metrics.json``: per-frame and mean PSNR (RGB, Y) and SSIM (Y) of the written 8-bit frames, the same for the
blurry input, time per frame and peak memory, and under ``protocol`` the published evaluation protocol (VRT's test
script: PSNR and SSIM on the written 8-bit RGB frames and on Y, border 0, the mean per sequence then over
sequences), which it also prints as a per-sequence table. ``--tile T H W --tile-overlap OT OH OW`` is VRT's test
form: T frames per temporal window overlapping by OT (the same as ``--clip-len``), spatial tiles of H x W
overlapping by OH x OW; 0 means whole
sequences or whole frames. How sequences are covered: ``ds_deblur.inference.pipeline``.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ds_deblur.ckpt.weights import read_weights
from ds_deblur.data.roots import LayoutOptions, add_location_arguments
from ds_deblur.errors import DsDeblurError, InferenceError
from ds_deblur.inference.pipeline import (Frame, Sequence, SpikeInput, build_from, find_sequences, load_frame,
                                          open_sequence, read_frame, restore_sequence, spike_input)
from ds_deblur.inference.tiling import restore
from ds_deblur.metrics import PROTOCOL_NAMES, protocol_scores, sequence_means

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHTS = {"auto": None, "ema": True, "trained": False}  # --weights -> read_weights(ema=...)
TILE_MULTIPLE = 64  # what the model's coarsest attention windows need (model.size_multiple of every preset)
MEAN_NAMES = ("psnr_rgb", "psnr_y", "ssim_y")  # the per-frame means metrics.json has always held


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds-deblur infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="last.pth / best.pth, a checkpoint dir (its latest tag), a "
                        "tag dir, or a weights export (.safetensors carries its config; .pth needs --config)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", type=Path, metavar="SEQ_DIR",
                        help="sequence folders, each with blur/*.png and spike/*.dat (or spike_vox/*.npy), "
                             "optionally sharp/*.png; a release sequence GOPRO_Large/SPLIT/SEQ finds its spikes "
                             "in GOPRO_Large_spike_seq/SPLIT/SEQ")
    source.add_argument("--root", type=Path, help="a dataset root (unified or release layout): every sequence "
                        "of --split")
    parser.add_argument("--split", default="val", help="with --root: the split folder (default: val, which is "
                        "'test' in the release layout)")
    add_location_arguments(parser)  # where this dataset's parts are: not the training run's DATA paths
    parser.add_argument("--output", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--tile", type=int, nargs="+", default=None, metavar="N",
                        help="spatial tile size in pixels, a multiple of 64 (default: whole frames), or VRT's "
                             "form T H W: frames per temporal window, tile height and width (0 = whole)")
    parser.add_argument("--tile-overlap", type=int, nargs="+", default=[32], metavar="N",
                        help="pixels shared by neighbouring tiles (default 32), or VRT's form OT OH OW: frames "
                             "shared by temporal windows, pixels shared by tiles")
    parser.add_argument("--clip-len", type=int, default=None,
                        help="frames per temporal window (default: the checkpoint's DATA.CLIP_LEN)")
    parser.add_argument("--precision", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--weights", choices=sorted(WEIGHTS), default="auto",
                        help="which weights of a run with TRAIN.EMA_DECAY > 0: the EMA weights (ema), the trained "
                             "ones (trained), or those the run validated with, its LOG.VAL_USE_EMA (auto, default)")
    parser.add_argument("--config", type=Path, default=None,
                        help="the run's config.yaml: needed for a .pth weights export, replaces a stored config")
    parser.add_argument("--spike-mean", type=float, default=None, help="spike voxel normalisation (default: "
                        "what the checkpoint was trained with)")
    parser.add_argument("--spike-std", type=float, default=None)
    parser.add_argument("--num-workers", type=int, default=None, help="threads reading and voxelising frames ahead "
                        "of the model (default: the config's TEST.NUM_WORKERS; 0 = read in the main thread)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        tiling = check_options(args)
        run(args, tiling)
    except DsDeblurError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


@dataclass(frozen=True)
class Tiling:
    """How a sequence is cut: temporal windows (``clip_len`` None = the checkpoint's, 0 = the whole sequence;
    ``clip_overlap`` None = half a window) and spatial tiles (``tile`` None = whole frames; (height, width))."""
    clip_len: Optional[int] = None
    clip_overlap: Optional[int] = None
    tile: Optional[tuple[int, int]] = None
    overlap: tuple[int, int] = (32, 32)


def check_options(args: argparse.Namespace) -> Tiling:
    """Refuse impossible options (before anything is loaded) and resolve the tiling they describe."""
    if args.output.exists() and not args.output.is_dir():
        raise InferenceError(f"--output {args.output} is a file; give a folder (it is created if missing)")
    if args.clip_len is not None and args.clip_len < 2:
        raise InferenceError(f"--clip-len {args.clip_len}: VRT needs windows of at least 2 frames")
    if (args.spike_mean is None) != (args.spike_std is None):
        raise InferenceError("give both --spike-mean and --spike-std, or neither")
    if args.num_workers is not None and args.num_workers < 0:
        raise InferenceError(f"--num-workers {args.num_workers} must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InferenceError("--device cuda, but CUDA is not available here; use --device cpu")
    return parse_tiling(args.tile, args.tile_overlap, args.clip_len)


def parse_tiling(tile: Optional[list[int]], overlap: list[int], clip_len: Optional[int]) -> Tiling:
    """``--tile N --tile-overlap N`` (square spatial tiles) or VRT's ``--tile T H W --tile-overlap OT OH OW``."""
    tile = tile or []
    if len(tile) not in (0, 1, 3) or len(overlap) not in (1, 3):
        raise InferenceError(f"--tile takes one size or VRT's three (frames, height, width), got {tile}; "
                             f"--tile-overlap one or three, got {overlap}")
    if len(overlap) == 3 and len(tile) != 3:
        raise InferenceError(f"--tile-overlap {' '.join(map(str, overlap))} (frames, height, width) needs --tile "
                             f"in the same form: --tile T H W")
    frames, space = (tile[0], tile[1:]) if len(tile) == 3 else (None, tile * 2)
    frame_overlap, space_overlap = (overlap[0], overlap[1:]) if len(overlap) == 3 else (None, overlap * 2)
    if frames is not None and clip_len is not None and frames not in (0, clip_len):
        raise InferenceError(f"--tile {frames} ... says {frames} frames per window but --clip-len says {clip_len}")
    if frames is not None and frames != 0 and (frames < 2 or not 0 <= (frame_overlap or 0) < frames):
        raise InferenceError(f"--tile {frames} ...: temporal windows need at least 2 frames and a frame overlap "
                             f"below that (--tile-overlap {frame_overlap} ...)")
    if space and space[0] == space[1] == 0:
        space = []
    if space and any(s <= 0 or s % TILE_MULTIPLE or not 0 <= o < s for s, o in zip(space, space_overlap)):
        raise InferenceError(f"--tile {' '.join(map(str, tile))}: each tile size must be a positive multiple of "
                             f"{TILE_MULTIPLE} (what the model's windows need) and larger than --tile-overlap "
                             f"{' '.join(map(str, overlap))}")
    return Tiling(clip_len if frames is None else frames, frame_overlap,
                  tuple(space) if space else None, tuple(space_overlap))


def run(args: argparse.Namespace, tiling: Tiling = Tiling()) -> dict:
    """Restore every frame of every sequence; returns what metrics.json holds (written when sharp frames exist)."""
    ckpt = read_weights(Path(args.ckpt), ema=WEIGHTS[args.weights])
    model, cfg = build_from(ckpt, Path(args.ckpt), args.config)
    options = replace(LayoutOptions.from_config(cfg.DATA), spike_root=args.spike_root, gt_root=args.gt_root,
                      lq_root=args.lq_root, meta_info_file=args.meta_info_file, meta_info_split=args.split,
                      io_backend=args.io_backend)
    dirs, data = find_sequences(options, args.root, args.split, tuple(args.input or ()))
    spike = spike_input(cfg, ckpt.spike, data, args.spike_mean, args.spike_std,
                        needs_flow=getattr(model, "needs_flow_spike", False))
    sequences = [open_sequence(d, spike, options) for d in dirs]  # every folder checked before the first frame runs
    device, dtype = torch.device(args.device), DTYPES[args.precision]
    model.to(device, dtype)
    clock = Clock(device)

    @torch.no_grad()
    def forward(blur: torch.Tensor, vox: torch.Tensor, flow_spike: Optional[torch.Tensor]) -> torch.Tensor:
        with clock:
            def run_model(b: torch.Tensor, s: torch.Tensor, f: Optional[torch.Tensor]) -> torch.Tensor:
                return model(b.to(device, dtype), s.to(device, dtype), None if f is None else f.to(device, dtype))
            flow = None if flow_spike is None else flow_spike[None]
            return restore(run_model, blur[None], vox[None], model.size_multiple, tiling.tile, tiling.overlap,
                           flow)[0].cpu()

    clip_len = tiling.clip_len if tiling.clip_len is not None else cfg.DATA.CLIP_LEN
    if cfg.TEST.BATCH_SIZE != 1:
        warnings.warn(f"TEST.BATCH_SIZE = {cfg.TEST.BATCH_SIZE}: inference runs one temporal window per forward pass",
                      UserWarning, stacklevel=2)
    workers = cfg.TEST.NUM_WORKERS if args.num_workers is None else args.num_workers
    frames, started = [], time.perf_counter()
    with tqdm(total=sum(len(s.frames) for s in sequences), unit="frame", desc="infer") as bar, \
            FramePrefetcher(workers, 2 * max(clip_len, 1)) as loader:
        for seq in sequences:
            (args.output / seq.name).mkdir(parents=True, exist_ok=True)
            seq_clip = clip_len or len(seq.frames)  # 0: the whole sequence in one window
            for i, restored in restore_sequence(seq, spike, forward, seq_clip, tiling.clip_overlap, load=loader):
                image = (restored.clamp(0, 1) * 255).round().to(torch.uint8)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(args.output / seq.name / f"{seq.frames[i]}.png")
                if seq.has_sharp:
                    frames.append(frame_metrics(seq, i, image.float() / 255))
                bar.update(1)
    count = bar.n
    report = {
        "checkpoint": str(args.ckpt), "loaded": ckpt.what, "data": data.describe() if data else None,
        "clip_len": clip_len, "clip_overlap": tiling.clip_overlap, "tile": _as_given(args.tile),
        "tile_overlap": _as_given(args.tile_overlap), "precision": args.precision, "device": str(device),
        "sequences": [s.name for s in sequences], "num_frames": count,
        "time_per_frame_s": clock.total / count, "wall_time_per_frame_s": (time.perf_counter() - started) / count,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if frames:
        report.update(mean=mean_of(frames, ""), input_mean=mean_of(frames, "input_"), frames=frames,
                      protocol=protocol_report(frames))
        (args.output / "metrics.json").write_text(json.dumps(report, indent=1))
        print(protocol_table(report["protocol"]))
        print(f"[infer] {len(frames)} frames: PSNR {report['mean']['psnr_rgb']:.3f} dB (blurry input "
              f"{report['input_mean']['psnr_rgb']:.3f}), SSIM-Y {report['mean']['ssim_y']:.4f} -> "
              f"{args.output / 'metrics.json'}")
    print(f"[infer] {count} frames in {args.output}, {report['time_per_frame_s']:.3f} s/frame (model), "
          f"peak memory {report['peak_memory_mb']:.0f} MB")
    return report


def _as_given(values: Optional[list[int]]) -> object:
    """A tile option as metrics.json has always held it: one number, or VRT's list of three."""
    return values[0] if values is not None and len(values) == 1 else values


def frame_metrics(seq: Sequence, i: int, restored: torch.Tensor) -> dict:
    """The protocol's PSNR and SSIM (RGB and Y) of a written frame and of its blurry input, against the sharp
    frame (all 8-bit frames as read from disk)."""
    sharp = read_frame(seq.sharp(i), seq.size)
    blur = read_frame(seq.blur(i), seq.size)
    record = {"seq": seq.name, "frame": seq.frames[i]}
    for prefix, image in (("", restored), ("input_", blur)):
        record.update({prefix + name: value for name, value in protocol_scores(image, sharp).items()})
    return record


def mean_of(frames: list[dict], prefix: str) -> dict:
    """Means over all frames (every frame weighs the same), as metrics.json's ``mean`` has always held."""
    return {name: float(np.mean([f[prefix + name] for f in frames])) for name in MEAN_NAMES}


def protocol_report(frames: list[dict]) -> dict:
    """metrics.json's ``protocol``: per-sequence and overall means (over sequences) of the restored frames and of
    the blurry input."""
    restored, blurry = sequence_means(frames), sequence_means(frames, prefix="input_")
    return {"definition": "VRT main_test_vrt.py: written 8-bit frames, border 0, RGB SSIM = mean over channels, "
                          "Y = BT.601 from the 8-bit frames; mean per sequence, then mean over sequences",
            "overall": restored["overall"], "input_overall": blurry["overall"],
            "sequences": {seq: {**values, "input": {name: blurry["sequences"][seq][name] for name in PROTOCOL_NAMES}}
                          for seq, values in restored["sequences"].items()}}


def protocol_table(protocol: dict) -> str:
    """The per-sequence table VRT's test script prints, with the blurry input's PSNR beside it."""
    width = max(len("average"), *(len(seq) for seq in protocol["sequences"]))
    header = (f"{'sequence':<{width}} {'frames':>6} {'PSNR':>8} {'SSIM':>7} {'PSNR-Y':>8} {'SSIM-Y':>7}   "
              f"{'input PSNR':>10}")
    lines = ["[infer] published protocol (VRT's test script): 8-bit frames, border 0, mean per sequence, then "
             "over sequences", header]
    rows = [(seq, values["frames"], values, values["input"]) for seq, values in protocol["sequences"].items()]
    rows.append(("average", sum(r[1] for r in rows), protocol["overall"], protocol["input_overall"]))
    for name, count, values, blurry in rows:
        lines.append(f"{name:<{width}} {count:>6} {values['psnr_rgb']:>8.3f} {values['ssim_rgb']:>7.4f} "
                     f"{values['psnr_y']:>8.3f} {values['ssim_y']:>7.4f}   {blurry['psnr_rgb']:>10.3f}")
    return "\n".join(lines)


class FramePrefetcher:
    """``load_frame`` for ``restore_sequence`` that reads the next ``ahead`` frames of the sequence in ``workers``
    background threads (PNG decoding and voxelisation release the GIL); 0 workers reads in the caller's thread."""

    def __init__(self, workers: int, ahead: int) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="infer-read") if workers > 0 else None
        self.ahead = ahead
        self.pending: dict[tuple[str, int], Future] = {}

    def __call__(self, seq: Sequence, i: int, spike: SpikeInput) -> Frame:
        if self.pool is None:
            return load_frame(seq, i, spike)
        for j in range(i, min(i + self.ahead, len(seq.frames))):
            if (seq.name, j) not in self.pending:
                self.pending[(seq.name, j)] = self.pool.submit(load_frame, seq, j, spike)
        return self.pending.pop((seq.name, i)).result()

    def __enter__(self) -> "FramePrefetcher":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class Clock:
    """Seconds spent inside ``with clock:`` blocks (waiting for the GPU to finish)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.total = device, 0.0

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.total += time.perf_counter() - self.start


def peak_memory_mb(device: torch.device) -> float:
    """Peak CUDA memory allocated, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
