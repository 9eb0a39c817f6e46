"""Deblur whole sequences with a trained checkpoint.

    python -m ds_deblur.infer --ckpt outputs/ckpts/best.pth --root data/synth --split val --output results
    python -m ds_deblur.infer --ckpt outputs/ckpts --input clips/seq_a clips/seq_b --output results --tile 256

Writes ``OUT/SEQ/NAME.png`` for every blurry input frame (same name and size) and, when the sequences have sharp
frames, ``OUT/metrics.json``: per-frame and mean PSNR (RGB, Y) and SSIM (Y) of the written 8-bit frames, the same
for the blurry input, time per frame and peak memory. How sequences are covered: ``ds_deblur.inference``.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ds_deblur.ckpt.weights import read_weights
from ds_deblur.errors import DsDeblurError, InferenceError
from ds_deblur.inference import (Sequence, SpikeInput, build_from, load_frame, open_sequence, read_png,
                                 restore_sequence, spike_input)
from ds_deblur.metrics import psnr, psnr_y, ssim_y
from ds_deblur.tiling import restore

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WEIGHTS = {"auto": None, "ema": True, "trained": False}  # --weights -> read_weights(ema=...)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ds_deblur.infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="last.pth / best.pth, a checkpoint dir (its latest tag), a "
                        "tag dir, or a weights export (.safetensors carries its config; .pth needs --config)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", type=Path, metavar="SEQ_DIR",
                        help="sequence folders, each with blur/*.png and spike/*.dat (or spike_vox/*.npy), "
                             "optionally sharp/*.png")
    source.add_argument("--root", type=Path, help="a dataset root: every sequence of --split")
    parser.add_argument("--split", default="val", help="with --root: the split folder (default: val)")
    parser.add_argument("--output", required=True, type=Path, help="output folder (created)")
    parser.add_argument("--tile", type=int, default=None, help="spatial tile size in pixels, a multiple of 64 "
                        "(default: whole frames)")
    parser.add_argument("--tile-overlap", type=int, default=32, help="pixels shared by neighbouring tiles")
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
        check_options(args)
        run(args)
    except DsDeblurError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def check_options(args: argparse.Namespace) -> None:
    if args.output.exists() and not args.output.is_dir():
        raise InferenceError(f"--output {args.output} is a file; give a folder (it is created if missing)")
    if args.clip_len is not None and args.clip_len < 2:
        raise InferenceError(f"--clip-len {args.clip_len}: VRT needs windows of at least 2 frames")
    if args.tile is not None and (args.tile % 64 or not 0 <= args.tile_overlap < args.tile):
        raise InferenceError(f"--tile {args.tile} must be a positive multiple of 64 (what the model's windows need) "
                             f"and larger than --tile-overlap {args.tile_overlap}")
    if (args.spike_mean is None) != (args.spike_std is None):
        raise InferenceError("give both --spike-mean and --spike-std, or neither")
    if args.num_workers is not None and args.num_workers < 0:
        raise InferenceError(f"--num-workers {args.num_workers} must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise InferenceError("--device cuda, but CUDA is not available here; use --device cpu")


def sequence_dirs(args: argparse.Namespace) -> tuple[list[Path], Optional[Path]]:
    """The sequence folders, and the data root whose meta.yaml describes their spike streams (if any)."""
    if args.root is not None:
        split = args.root / args.split
        dirs = sorted(p for p in split.iterdir() if p.is_dir()) if split.is_dir() else []
        if not dirs:
            raise InferenceError(f"{split} has no sequence folders (expected {split}/SEQ/blur/*.png)")
        return dirs, args.root
    missing = [p for p in args.input if not p.is_dir()]
    if missing:
        raise InferenceError(f"--input {missing[0]} is not a folder")
    first = args.input[0].resolve()
    root = next((p for p in (first.parent.parent, first.parent, first) if (p / "meta.yaml").is_file()), None)
    return list(args.input), root


def run(args: argparse.Namespace) -> dict:
    """Restore every frame of every sequence; returns what metrics.json holds (written when sharp frames exist)."""
    dirs, data_root = sequence_dirs(args)
    ckpt = read_weights(Path(args.ckpt), ema=WEIGHTS[args.weights])
    model, cfg = build_from(ckpt, Path(args.ckpt), args.config)
    spike = spike_input(cfg, ckpt.spike, data_root, args.spike_mean, args.spike_std)
    sequences = [open_sequence(d, spike) for d in dirs]  # every folder checked before the first frame runs
    device, dtype = torch.device(args.device), DTYPES[args.precision]
    model.to(device, dtype)
    clock = Clock(device)

    @torch.no_grad()
    def forward(blur: torch.Tensor, vox: torch.Tensor) -> torch.Tensor:
        with clock:
            def run_model(b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
                return model(b.to(device, dtype), s.to(device, dtype))
            return restore(run_model, blur[None], vox[None], model.size_multiple, args.tile, args.tile_overlap)[0].cpu()

    clip_len = args.clip_len or cfg.DATA.CLIP_LEN
    if cfg.TEST.BATCH_SIZE != 1:
        warnings.warn(f"TEST.BATCH_SIZE = {cfg.TEST.BATCH_SIZE}: inference runs one temporal window per forward pass",
                      UserWarning, stacklevel=2)
    loader = FramePrefetcher(cfg.TEST.NUM_WORKERS if args.num_workers is None else args.num_workers, 2 * clip_len)
    frames, started = [], time.perf_counter()
    from tqdm import tqdm
    with tqdm(total=sum(len(s.frames) for s in sequences), unit="frame", desc="infer") as bar, loader:
        for seq in sequences:
            (args.output / seq.name).mkdir(parents=True, exist_ok=True)
            for i, restored in restore_sequence(seq, spike, forward, clip_len, load=loader):
                image = (restored.clamp(0, 1) * 255).round().to(torch.uint8)
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(args.output / seq.name / f"{seq.frames[i]}.png")
                if seq.has_sharp:
                    frames.append(frame_metrics(seq, i, image.float() / 255))
                bar.update(1)
    count = bar.n
    report = {
        "checkpoint": str(args.ckpt), "loaded": ckpt.what, "clip_len": clip_len, "tile": args.tile,
        "tile_overlap": args.tile_overlap, "precision": args.precision, "device": str(device),
        "sequences": [s.name for s in sequences], "num_frames": count,
        "time_per_frame_s": clock.total / count, "wall_time_per_frame_s": (time.perf_counter() - started) / count,
        "peak_memory_mb": peak_memory_mb(device),
    }
    if frames:
        report.update(mean=mean_of(frames, ""), input_mean=mean_of(frames, "input_"), frames=frames)
        (args.output / "metrics.json").write_text(json.dumps(report, indent=1))
        print(f"[infer] {len(frames)} frames: PSNR {report['mean']['psnr_rgb']:.3f} dB (blurry input "
              f"{report['input_mean']['psnr_rgb']:.3f}), SSIM-Y {report['mean']['ssim_y']:.4f} -> "
              f"{args.output / 'metrics.json'}")
    print(f"[infer] {count} frames in {args.output}, {report['time_per_frame_s']:.3f} s/frame (model), "
          f"peak memory {report['peak_memory_mb']:.0f} MB")
    return report


def frame_metrics(seq: Sequence, i: int, restored: torch.Tensor) -> dict:
    """PSNR (RGB, Y), SSIM (Y) of a written frame and of its blurry input, against the sharp frame."""
    sharp = read_png(seq.sharp(i), seq.size)[None]
    blur = read_png(seq.blur(i), seq.size)[None]
    record = {"seq": seq.name, "frame": seq.frames[i]}
    for prefix, image in (("", restored[None]), ("input_", blur)):
        record.update({f"{prefix}psnr_rgb": psnr(image, sharp).item(), f"{prefix}psnr_y": psnr_y(image, sharp).item(),
                       f"{prefix}ssim_y": ssim_y(image, sharp).item()})
    return record


def mean_of(frames: list[dict], prefix: str) -> dict:
    return {name: float(np.mean([f[prefix + name] for f in frames])) for name in ("psnr_rgb", "psnr_y", "ssim_y")}


class FramePrefetcher:
    """``load_frame`` for ``restore_sequence`` that reads the next ``ahead`` frames of the sequence in ``workers``
    background threads (PNG decoding and voxelisation release the GIL); 0 workers reads in the caller's thread."""

    def __init__(self, workers: int, ahead: int) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="infer-read") if workers > 0 else None
        self.ahead = ahead
        self.pending: dict[tuple[str, int], Future] = {}

    def __call__(self, seq: Sequence, i: int, spike: SpikeInput) -> tuple[torch.Tensor, torch.Tensor]:
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


if __name__ == "__main__":
    sys.exit(main())
