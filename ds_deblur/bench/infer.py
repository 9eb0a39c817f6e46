"""infer: time per frame and peak memory of ``ds-deblur infer`` on full 1280x720 frames.

Generates a test split in the GoPro spike release's layout at the real size (720x1280 RGB, 360x640 x 64 spike
streams) and runs the real command line on it once per preset, each in its own process (so that its peak memory
is its own): the model freshly initialised (timing does not depend on the weights), saved as a weights export with
the run's config. Tiled as VRT tests GoPro: spatial tiles of 192x192 overlapping by 20 pixels; one temporal window
holding the whole sequence (``--tile T 192 192 --tile-overlap 1 20 20`` with T = the sequence length), so each frame
runs once. 720 rows pad to 768, the model's multiple of 64, and are cropped back. Time per frame is the model's
(``time_per_frame_s`` in metrics.json); peak memory the process's peak resident set. A frame is 40 tiles here; at
VRT's 18-frame windows overlapping by 2, every frame would run 18/16 times.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from ds_deblur.bench.common import REPO, format_table, positive_int
from ds_deblur.config import load_config
from ds_deblur.data.synth import SynthConfig, generate
from ds_deblur.models import build_model

SIZE, SPIKE_SIZE, SPIKE_FRAMES = (720, 1280), (360, 640), 64
TILE, OVERLAP = 192, 20  # VRT's GoPro test setting (--tile 18 192 192 --tile-overlap 2 20 20), spatially


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--presets", nargs="+", default=["tiny", "base"], choices=["tiny", "base", "vrt_gopro"])
    parser.add_argument("--frames", type=positive_int, nargs="+", default=[4, 2], metavar="N",
                        help="frames of the sequence each preset restores, in --presets order (default: 4 for tiny, "
                             "2 for base: base takes minutes per frame on a CPU)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="torch threads of the inference process (default: torch's own choice)")


def run(args: argparse.Namespace, work: Path) -> dict:
    if len(args.frames) != len(args.presets):
        raise ValueError(f"--frames needs one count per preset ({len(args.presets)}), got {args.frames}")
    runs = [run_preset(preset, frames, work / preset, args.threads)
            for preset, frames in zip(args.presets, args.frames)]
    return {"settings": {"presets": args.presets, "frames": args.frames, "threads": args.threads, "rgb": list(SIZE),
                         "spike": list(SPIKE_SIZE), "spike_frames": SPIKE_FRAMES, "tile": TILE, "overlap": OVERLAP},
            "runs": runs}


def run_preset(preset: str, frames: int, work: Path, threads: Optional[int]) -> dict:
    """One ``ds-deblur infer`` run of ``preset`` on a test sequence of ``frames`` frames."""
    started = time.perf_counter()
    data = generate(work / "gopro", SynthConfig(seed=0, train_seqs=0, val_seqs=1, frames=frames, size=SIZE,
                                                spike_size=SPIKE_SIZE, subframes=SPIKE_FRAMES), layout="gopro")
    print(f"[bench infer] {preset}: {frames} frames of {SIZE[1]}x{SIZE[0]} generated in "
          f"{time.perf_counter() - started:.0f} s")
    cfg = load_config({"DATA": {"ROOT": str(data), "CLIP_LEN": frames, "K": 32, "NORM": {"MEAN": 0.0, "STD": 1.0}},
                       "MODEL": {"PRESET": preset}})
    torch.manual_seed(0)
    model = build_model(cfg)
    weights, config, out = work / "weights.pth", work / "config.yaml", work / "out"
    torch.save(model.state_dict(), weights)
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    command = ["-m", "ds_deblur.inference.cli", "--ckpt", str(weights), "--config", str(config), "--root", str(data),
               "--output", str(out), "--device", "cpu",
               "--tile", str(frames), str(TILE), str(TILE), "--tile-overlap", "1", str(OVERLAP), str(OVERLAP)]
    env = dict(os.environ, **({} if threads is None else {"OMP_NUM_THREADS": str(threads)}))
    print(f"[bench infer] {preset}: python {' '.join(command)}")
    proc = subprocess.run([sys.executable, *command], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"infer failed for {preset}:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "metrics.json").read_text())
    written = sorted(p.name for p in (out / report["sequences"][0]).iterdir())
    return {"preset": preset, "frames": frames, "command": "python " + " ".join(command),
            "parameters": sum(p.numel() for p in model.parameters()), "written": written,
            "time_per_frame_s": report["time_per_frame_s"], "wall_time_per_frame_s": report["wall_time_per_frame_s"],
            "peak_memory_mb": report["peak_memory_mb"]}


def table(results: dict) -> str:
    rows = [[r["preset"], f"{r['parameters'] / 1e6:.1f} M", r["frames"], f"{r['time_per_frame_s']:.1f} s",
             f"{r['wall_time_per_frame_s']:.1f} s", f"{r['peak_memory_mb']:,.0f} MiB"] for r in results["runs"]]
    return format_table(["preset", "parameters", "frames", "model time/frame", "wall time/frame", "peak RSS"], rows)
