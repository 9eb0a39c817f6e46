"""ablation: what the spike branch is worth. Trains the demo's configuration (``launch/demo.sh``: the trainer under
the ``deepspeed`` launcher with ``ds_configs/tiny_synth.yaml``, ``cpu_fp32.json`` on 2 CPU ranks or
``zero2_fp16.json`` on every GPU, the default synthetic data set) twice from the same seed for the same steps:
RGB + spike (the model as configured) and RGB only (``MODEL.USE_SPIKE=false``, plain VRT); with
``--original-fusion`` also RGB + spike with the original S-VRT fusion (``MODEL.FUSE.FRAME_DISTANCE_PENALTY=0``:
the clip's spike frames told apart by content only). Reported: the final validation on the whole validation frames
— PSNR (RGB) and SSIM (Y) — of the blurry input and of each run, and each run's seconds per step.

``--svrt-operators [NAME ...]`` compares S-VRT's fusions instead: the early-fusion CPU demo
(``ds_configs/svrt_early_fusion_cpu.json``) trained once per fusion from the same seed for the same steps, with
only the fusion changed as ``bench svrt`` changes it (every early-fusion operator with its default frame contract
and S-VRT's default options, the file's own options for its own operator, and ``input_concat``: S-VRT's concat
input strategy, no fusion module); all of them by default, or the ones named. ``--config`` is not used then.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from ds_deblur.bench.common import (REPO, add_trainer_arguments, deepspeed_launcher, format_table, run_checked,
                                    tb_scalars)
from ds_deblur.bench.svrt import DEMO_CONFIG, demo_net
from ds_deblur.config.kair import read_option_file
from ds_deblur.data.synth import generate
from ds_deblur.models.svrt.options import OPERATORS

# name -> the overrides that make it
VARIANTS = {"rgb": ["MODEL.USE_SPIKE=false"], "rgb+spike": ["MODEL.USE_SPIKE=true"]}
ORIGINAL_FUSION = {"rgb+spike, original fusion": ["MODEL.USE_SPIKE=true", "MODEL.FUSE.FRAME_DISTANCE_PENALTY=0"]}
SVRT_FUSIONS = (*OPERATORS, "input_concat")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trainer_arguments(parser, "experiment YAML (default: the demo's)")
    parser.add_argument("--data", type=Path,
                        help="dataset root (default: the default synthetic set, generated in the work folder)")
    parser.add_argument("--original-fusion", action="store_true",
                        help="also train RGB + spike with MODEL.FUSE.FRAME_DISTANCE_PENALTY=0 (the original fusion)")
    parser.add_argument("--svrt-operators", nargs="*", choices=SVRT_FUSIONS, metavar="NAME",
                        help="instead, train S-VRT's early-fusion CPU demo once per fusion: all of "
                             f"{', '.join(SVRT_FUSIONS)} (no NAME) or the ones named")


def demo_deepspeed_json() -> Path:
    """The engine config ``launch/demo.sh`` uses: fp16 ZeRO 2 on GPUs, fp32 ZeRO 2 on CPU."""
    return REPO / ("ds_configs/zero2_fp16.json" if torch.cuda.is_available() else "ds_configs/cpu_fp32.json")


def run(args: argparse.Namespace, work: Path) -> dict:
    data = args.data or generate(work / "data")
    if args.svrt_operators is not None:
        return _svrt_runs(args, data, work, args.svrt_operators or SVRT_FUSIONS)
    variants = {**VARIANTS, **(ORIGINAL_FUSION if args.original_fusion else {})}
    runs = {name: _train(args, args.config, data, work / f"run{i}", sets)
            for i, (name, sets) in enumerate(variants.items())}
    return {**_summary(args, args.config, data, runs),
            "spike_gain_db": runs["rgb+spike"]["psnr_rgb"] - runs["rgb"]["psnr_rgb"]}


def _svrt_runs(args: argparse.Namespace, data: Path, work: Path, fusions: list[str]) -> dict:
    """The S-VRT demo once per fusion: an option file each, the demo's with that fusion's netG."""
    runs = {}
    for name in fusions:
        config = work / f"{name}.json"
        config.write_text(json.dumps({**read_option_file(DEMO_CONFIG), "netG": demo_net(name)}, indent=1))
        runs[name] = _train(args, str(config), data, work / f"run_{name}", [])
    return {**_summary(args, str(DEMO_CONFIG), data, runs), "fusions": list(fusions)}


def _summary(args: argparse.Namespace, config: str, data: Path, runs: dict) -> dict:
    first = next(iter(runs.values()))
    return {"settings": {"config": config, "sets": args.set, "ranks": args.ranks, "data": str(data),
                         "deepspeed_config": str(demo_deepspeed_json())},
            "blurry": {"psnr_rgb": first["input_psnr_rgb"], "ssim_y": first["input_ssim_y"]}, "runs": runs}


def _train(args: argparse.Namespace, config: str, data: Path, out: Path, variant: list[str]) -> dict:
    """One training run; its last validation and its timing."""
    out.mkdir(parents=True)
    script = ["--config", config, "--deepspeed_config", str(demo_deepspeed_json())]
    for item in [f"DATA.ROOT={data}", f"LOG.SAVE_DIR={out / 'run'}", *args.set, *variant]:
        script += ["--set", item]
    print(f"[bench ablation] training {config} {' '.join(variant)} -> {out / 'run'}", flush=True)
    started = time.perf_counter()
    run_checked(deepspeed_launcher(args.ranks, REPO / "ds_deblur/train.py", script), out / "log.txt")
    seconds = time.perf_counter() - started
    final = json.loads(max((out / "run/metrics").glob("val_step_*.json")).read_text())
    steps = len((out / "run/metrics/train_log.jsonl").read_text().splitlines())
    # The trainer's own step time (data wait + forward + backward + step; no validation, no saving), as logged.
    step_time = statistics.median(tb_scalars(out / "run/tb", "perf/step_time_ms").values()) / 1e3
    return {**final, "config": config, "sets": variant, "seconds": seconds, "steps": steps, "step_time_s": step_time}


def table(results: dict) -> str:
    blurry = results["blurry"]
    rows = [["blurry input", f"{blurry['psnr_rgb']:.2f}", f"{blurry['ssim_y']:.4f}", "", ""]]
    for name, r in results["runs"].items():
        rows.append([name, f"{r['psnr_rgb']:.2f}", f"{r['ssim_y']:.4f}", f"{r['psnr_rgb'] - blurry['psnr_rgb']:+.2f}",
                     f"{r['steps']} steps, {r['step_time_s']:.2f} s/step"])
    text = format_table(["", "PSNR (RGB) dB", "SSIM (Y)", "over blurry", "run"], rows)
    if "spike_gain_db" in results:
        return text + f"\nspike branch: {results['spike_gain_db']:+.2f} dB over RGB only"
    return text
