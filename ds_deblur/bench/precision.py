"""precision: the trainer's optimizer step on CPU ranks in fp32 against DeepSpeed's bf16 engine and against fp32
with the forward under bf16 autocast (DeepSpeed's torch_autocast), ZeRO 2 (the built-in CPU configs:
``ds_deblur.zero.setup.cpu_engine_config``), for each model preset on the demo's clips (the config's DATA.CLIP_LEN
and DATA.CROP_SIZE). This is what decides what each preset trains in by default on a CPU with bf16 instructions
(``ds_deblur.zero.setup.CPU_BF16_DEFAULTS``).

Runs are interleaved (each round runs every preset x precision once, the order rotated per round). Step times are
the trainer's own ``perf/step_time_ms`` without the first ``--warmup`` steps; reported per preset: the median step
of each precision, the speed-ups over fp32 as the median of the per-round ratios, and the mean training loss of
each run of the first round (the same seed and data: a numerical sanity check, not a learning test; the learning
check is the demo trained in each precision, docs/performance.md).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from ds_deblur.bench.common import (add_trainer_arguments, format_table, positive_int, summary, synthetic_trainer_sets,
                                    trainer_step_times)
from ds_deblur.config import MODEL_PRESETS

PRECISIONS = ("fp32", "bf16", "autocast")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trainer_arguments(parser, "experiment YAML (default: the CPU demo's; MODEL.PRESET is set per run)")
    parser.add_argument("--presets", nargs="+", default=list(MODEL_PRESETS), choices=MODEL_PRESETS)
    parser.add_argument("--rounds", type=positive_int, default=2,
                        help="interleaved rounds (each runs every preset x precision once)")
    parser.add_argument("--steps", type=positive_int, default=4, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")


def run(args: argparse.Namespace, work: Path) -> dict:
    from ds_deblur.zero.setup import cpu_engine_config, cpu_has_bf16  # here: `bench --help` skips DeepSpeed's import
    if torch.cuda.is_available():
        raise ValueError("bench precision measures CPU ranks; hide the GPUs (CUDA_VISIBLE_DEVICES=) to run it here")
    cfg, sets = synthetic_trainer_sets(args.config, args.set, 0, work)
    variants = [(preset, precision) for preset in args.presets for precision in PRECISIONS]
    runs = []
    for round_ in range(args.rounds):
        shift = round_ % len(variants)
        for preset, precision in variants[shift:] + variants[:shift]:
            times = trainer_step_times(args.config, cpu_engine_config(precision),
                                       [*sets, f"MODEL.PRESET={preset}"], work / f"r{round_}_{preset}_{precision}",
                                       args.ranks, args.warmup, args.steps)
            runs.append({"round": round_, "preset": preset, "precision": precision, **times})
            print(f"[bench precision] round {round_} {preset} {precision}: median step "
                  f"{statistics.median(times['step_time_s']):.3f} s", flush=True)
    return {"settings": {"config": args.config, "sets": sets, "ranks": args.ranks, "rounds": args.rounds,
                         "steps": args.steps, "warmup": args.warmup, "clip_len": cfg.DATA.CLIP_LEN,
                         "crop": cfg.DATA.CROP_SIZE, "cpu_has_bf16": cpu_has_bf16()},
            "runs": runs, "summary": _summarize(runs, args.presets)}


def _summarize(runs: list[dict], presets: list[str]) -> dict:
    median = {(r["round"], r["preset"], r["precision"]): statistics.median(r["step_time_s"]) for r in runs}
    first_loss = {(r["preset"], r["precision"]): statistics.fmean(r["loss"]) for r in runs if r["round"] == 0}
    rounds = sorted({r["round"] for r in runs})
    result = {}
    for preset in presets:
        row = {}
        for p in PRECISIONS:
            row[f"{p}_step_s"] = summary([t for r in runs if (r["preset"], r["precision"]) == (preset, p)
                                          for t in r["step_time_s"]])
            row[f"{p}_mean_loss"] = first_loss[(preset, p)]
            if p != "fp32":
                row[f"{p}_speedup"] = summary([median[(i, preset, "fp32")] / median[(i, preset, p)] for i in rounds])
        result[preset] = row
    return result


def table(results: dict) -> str:
    rows = []
    for preset, s in results["summary"].items():
        cells = [preset]
        for p in PRECISIONS:
            cells.append(f"{s[f'{p}_step_s']['median']:.3f}")
            if p != "fp32":
                up = s[f"{p}_speedup"]
                cells.append(f"{up['median']:.2f} ({up['min']:.2f}-{up['max']:.2f})")
        cells += [" / ".join(f"{s[f'{p}_mean_loss']:.4f}" for p in PRECISIONS)]
        rows.append(cells)
    return format_table(["preset", "fp32 step s", "bf16 step s", "bf16 speed-up (min-max)", "autocast step s",
                         "autocast speed-up (min-max)", "loss fp32 / bf16 / autocast"], rows)
