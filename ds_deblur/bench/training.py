"""engine: samples/s of the trainer (``ds_deblur/train.py`` under the ``deepspeed`` launcher) at ZeRO 0-3 against a
plain PyTorch DDP loop (``ds_deblur.bench.ddp_loop`` under torchrun) with the same model, data, loss, optimizer,
precision and world size. CPU: fp32, gloo; GPU: fp16 (DeepSpeed's loss scaling) against DDP + AMP.

Runs are interleaved (each round runs every variant once, the order rotated per round) so that drift of the
machine hits all alike. Step times are the trainer's own ``perf/step_time_ms`` from its TensorBoard events (data
wait + forward + backward + step, without validation or saving) and the same span in the DDP loop; the first
``--warmup`` steps of each run are dropped. Reported: median step time over all timed steps, samples/s from it, the
spread of the per-round medians, and DeepSpeed / DDP as the median of the per-round ratios.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from ds_deblur.bench.common import (add_trainer_arguments, ds_json_for_stage, format_table, positive_int, run_checked,
                                    summary, synthetic_trainer_sets, torchrun, trainer_step_times)

STAGES = (0, 1, 2, 3)
DDP = "ddp"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trainer_arguments(parser, "experiment YAML (default: the tiny preset of the CPU demo)")
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="interleaved rounds (each runs every variant once)")
    parser.add_argument("--steps", type=positive_int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps at the start of each run")
    parser.add_argument("--stages", type=int, nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--workers", type=int, default=0, help="DATALOADER.NUM_WORKERS of both loops")


def run(args: argparse.Namespace, work: Path) -> dict:
    cuda = torch.cuda.is_available()
    cfg, sets = synthetic_trainer_sets(args.config, args.set, args.workers, work)
    variants = [DDP] + [f"zero{s}" for s in args.stages]
    runs = []
    for round_ in range(args.rounds):
        shift = round_ % len(variants)
        for name in variants[shift:] + variants[:shift]:
            out = work / f"r{round_}_{name}"
            times = _run_ddp(args, sets, out) if name == DDP else _run_trainer(args, sets, out, int(name[4:]))
            runs.append({"round": round_, "variant": name, **times})
            print(f"[bench engine] round {round_} {name}: median step "
                  f"{statistics.median(times['step_time_s']):.3f} s", flush=True)
    batch = cfg.TRAIN.BATCH_SIZE * args.ranks
    return {"settings": {"config": args.config, "sets": sets, "ranks": args.ranks, "rounds": args.rounds,
                         "steps": args.steps, "warmup": args.warmup, "precision": "fp16" if cuda else "fp32",
                         "global_batch": batch, "clip_len": cfg.DATA.CLIP_LEN, "crop": cfg.DATA.CROP_SIZE,
                         "preset": cfg.MODEL.PRESET},
            "runs": runs, "summary": _summarize(runs, variants, batch)}


def _run_trainer(args: argparse.Namespace, sets: list[str], out: Path, stage: int) -> dict:
    ds, _ = ds_json_for_stage(stage)
    return trainer_step_times(args.config, ds, sets, out, args.ranks, args.warmup, args.steps)


def _run_ddp(args: argparse.Namespace, sets: list[str], out: Path) -> dict:
    out.mkdir(parents=True)
    loop = ["--config", args.config, "--warmup", str(args.warmup), "--steps", str(args.steps),
            "--out", str(out / "times.json")] + (["--fp16"] if torch.cuda.is_available() else [])
    for item in sets:
        loop += ["--set", item]
    run_checked(torchrun(args.ranks, "ds_deblur.bench.ddp_loop", loop), out / "log.txt")
    times = json.loads((out / "times.json").read_text())
    return {"step_time_s": times["step_time_s"], "data_time_s": times["data_time_s"]}


def _summarize(runs: list[dict], variants: list[str], batch: int) -> dict:
    result = {}
    rounds = sorted({r["round"] for r in runs})
    round_median = {(r["round"], r["variant"]): statistics.median(r["step_time_s"]) for r in runs}
    for name in variants:
        steps = [t for r in runs if r["variant"] == name for t in r["step_time_s"]]
        waits = [t for r in runs if r["variant"] == name for t in r["data_time_s"]]
        per_round = [round_median[(i, name)] for i in rounds]
        ratios = [round_median[(i, DDP)] / round_median[(i, name)] for i in rounds]
        result[name] = {"step_time_s": summary(steps), "round_medians_s": summary(per_round),
                        "samples_per_s": batch / statistics.median(steps),
                        "data_wait_fraction": sum(waits) / sum(steps), "vs_ddp": summary(ratios)}
    return result


def table(results: dict) -> str:
    rows = []
    for name, s in results["summary"].items():
        rows.append([name, f"{s['samples_per_s']:.3f}", f"{s['step_time_s']['median']:.3f}",
                     f"{100 * s['round_medians_s']['spread']:.1f}%", f"{100 * s['data_wait_fraction']:.2f}%",
                     f"{s['vs_ddp']['median']:.3f} ({s['vs_ddp']['min']:.3f}-{s['vs_ddp']['max']:.3f})"])
    return format_table(["variant", "samples/s", "step s (median)", "round spread", "data wait", "/ DDP (min-max)"],
                        rows)
