"""memory: what each rank holds for ZeRO 0-3 at world sizes 1, 2 and 4 (``ds_deblur.bench.memory_ranks``):
bytes of parameters, gradients, fp32 master weights, optimizer state and gradient buckets read from the engine's
own tensors after a training step's backward, against the ideal 1/N sharding of what that stage shards (ZeRO 1:
master weights and optimizer state; 2: also gradients; 3: also parameters), taking the same stage on one rank as
the unsharded amount; and the stage's peak memory per rank (CPU: rise of peak RSS; GPU: max_memory_allocated).
The sharded EMA weights (``ds_deblur.zero.ema``, TRAIN.EMA_DECAY) are measured beside them, from ZeRO 1 on, against the
ideal 1/N of the same stage's one-rank EMA (a full fp32 copy); they are not in the total, which is what a run
without EMA holds.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ds_deblur.bench.common import MIB, REPO, format_table, positive_int, run_checked, torchrun

SHARDED_FROM = {"optimizer_state": 1, "master_weights": 1, "gradients": 2, "parameters": 3, "ema": 1}
ROLES = ("parameters", "gradients", "master_weights", "optimizer_state")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(REPO / "ds_configs/tiny_synth.yaml"),
                        help="experiment YAML: model preset and training shape (default: the tiny CPU demo)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--world-sizes", type=positive_int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3], choices=[0, 1, 2, 3])


def run(args: argparse.Namespace, work: Path) -> dict:
    rows = []
    for world in args.world_sizes:
        out = work / f"world{world}"
        out.mkdir()
        command = ["--config", args.config, "--out", str(out), "--stages", *map(str, args.stages)]
        for item in args.set:
            command += ["--set", item]
        run_checked(torchrun(world, "ds_deblur.bench.memory_ranks", command), work / f"world{world}.log")
        rows += [json.loads(p.read_text()) for p in sorted(out.glob("stage*_rank*.json"))]
        print(f"[bench memory] world size {world} measured", flush=True)
    return {"settings": {"config": args.config, "sets": args.set, "world_sizes": args.world_sizes,
                         "stages": args.stages}, "ranks": rows, "summary": _summarize(rows)}


def _summarize(rows: list[dict]) -> list[dict]:
    """Per (stage, world): each role's bytes on the most loaded rank, and the ideal from the same stage on 1 rank."""
    result = []
    for stage, world in sorted({(r["stage"], r["world_size"]) for r in rows}):
        ranks = [r for r in rows if r["stage"] == stage and r["world_size"] == world]
        alone = [r for r in rows if r["stage"] == stage and r["world_size"] == 1]
        entry = {"stage": stage, "world_size": world,
                 "peak_mib": max(r["peak_mib"] for r in ranks),
                 "buckets_mib": max(r["held_bytes"]["buckets"] for r in ranks) / MIB,
                 "all_tensors_mib": max(r["held_bytes"]["all_tensors"] for r in ranks) / MIB}
        for role in ROLES:
            entry[f"{role}_mib"] = max(r["held_bytes"][role] for r in ranks) / MIB
        entry["total_mib"] = sum(entry[f"{role}_mib"] for role in ROLES)
        entry["ema_mib"] = max(r["held_bytes"].get("ema", 0) for r in ranks) / MIB
        if alone:
            base = {role: statistics.mean(r["held_bytes"][role] for r in alone) / MIB for role in ROLES}
            entry["ideal_mib"] = sum(base[role] / (world if stage >= SHARDED_FROM[role] else 1) for role in ROLES)
            entry["vs_ideal"] = entry["total_mib"] / entry["ideal_mib"]
            full_ema = statistics.mean(r["held_bytes"].get("ema", 0) for r in alone) / MIB
            if full_ema:
                entry["ema_full_copy_mib"] = full_ema
                entry["ema_vs_ideal"] = entry["ema_mib"] / (full_ema / world)
        result.append(entry)
    return result


def table(results: dict) -> str:
    rows = [[f"ZeRO {e['stage']}", e["world_size"], *(f"{e[f'{role}_mib']:.1f}" for role in ROLES),
             f"{e['total_mib']:.1f}", f"{e['ideal_mib']:.1f}" if "ideal_mib" in e else "-",
             f"{e['vs_ideal']:.2f}" if "vs_ideal" in e else "-", _ema_cell(e), f"{e['buckets_mib']:.0f}",
             f"{e['peak_mib']:.0f}"]
            for e in results["summary"]]
    return format_table(["stage", "ranks", "params MiB", "grads MiB", "fp32 master MiB", "optim MiB", "total MiB",
                         "ideal MiB", "/ ideal", "EMA MiB (/ ideal)", "buckets MiB (alloc)", "peak MiB"], rows)


def _ema_cell(entry: dict) -> str:
    if not entry.get("ema_mib"):
        return "-"
    return f"{entry['ema_mib']:.1f}" + (f" ({entry['ema_vs_ideal']:.2f})" if "ema_vs_ideal" in entry else "")
