"""checkpoint: save and load seconds and MB/s of a sharded tag (the base preset at ZeRO 2 on 2 ranks by default;
``ds_deblur.bench.checkpoint_ranks``) against one ``torch.save``/``torch.load`` of the same number of bytes on the
same disk; the seconds training is blocked per save (``CheckpointManager.save``, the ``last.pth`` export in the
background) against the tag write itself (target: at most 1.3x); then, on that tag, our single-file converter
(``last.pth``: weights + AdamW state) and weights export against DeepSpeed's ``zero_to_fp32`` (fp32 weights): seconds, peak RSS of the process, and peak RSS above that of
an interpreter that only imported torch and deepspeed, against the bytes each writes (target: at most 1.5x).
Converter runs are interleaved; the tag is in the page cache (written moments before), as after a real save.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ds_deblur.bench.common import (MIB, REPO, dir_bytes, format_table, measured_child, positive_int, run_checked,
                                    summary, torchrun)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(REPO / "ds_configs/vrt_spike_baseline.yaml"),
                        help="experiment YAML giving the model (default: the base preset)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    parser.add_argument("--ranks", type=positive_int, default=2)
    parser.add_argument("--stage", type=int, default=2, choices=[0, 1, 2])
    parser.add_argument("--repeats", type=positive_int, default=5,
                        help="saves, loads and converter runs of each kind")


def _converters(ckpt: Path, tag: str, work: Path) -> dict[str, tuple[list[str], Path]]:
    py = sys.executable
    # DeepSpeed's tool as its CLI runs it, less the CLI's 5 GB sharding (which needs huggingface_hub): one file.
    zero_to_fp32 = ("import sys; from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict"
                    " as convert; convert(sys.argv[1], sys.argv[2], max_shard_size=None, tag=sys.argv[3])")
    return {
        "ds-deblur convert last.pth": ([py, "-m", "ds_deblur", "convert", str(ckpt), "--tag", tag, "--out",
                                        str(work / "last.pth")], work / "last.pth"),
        "ds-deblur convert --weights-only": ([py, "-m", "ds_deblur", "convert", str(ckpt), "--tag", tag,
                                              "--weights-only", "--out", str(work / "model.pth")], work / "model.pth"),
        "deepspeed zero_to_fp32": ([py, "-c", zero_to_fp32, str(ckpt), str(work / "zero_to_fp32"), tag],
                                   work / "zero_to_fp32"),
    }


def run(args: argparse.Namespace, work: Path) -> dict:
    command = ["--config", args.config, "--out", str(work), "--stage", str(args.stage), "--repeats",
               str(args.repeats)]
    for item in args.set:
        command += ["--set", item]
    run_checked(torchrun(args.ranks, "ds_deblur.bench.checkpoint_ranks", command), work / "ranks.log")
    ranks = json.loads((work / "ranks.json").read_text())
    medians = {key: statistics.median(ranks[key]) for key in ("save_s", "load_s", "raw_save_s", "raw_load_s",
                                                               "blocked_s")}
    size_mb = ranks["tag_bytes"][-1] / 1e6
    tools = _converters(work / "ckpts", ranks["tag"], work)
    interpreter = [measured_child([sys.executable, "-c", "import torch, deepspeed"])["peak_rss_mib"]
                   for _ in range(args.repeats)]
    runs = {name: [] for name in tools}
    for _ in range(args.repeats):
        for name, (command, output) in tools.items():
            runs[name].append({**measured_child(command), "bytes_written": dir_bytes(output) if output.is_dir()
                               else output.stat().st_size})
    baseline = min(interpreter)
    converters = {}
    for name, rows in runs.items():
        written = rows[-1]["bytes_written"] / MIB
        peak = statistics.median(r["peak_rss_mib"] for r in rows)
        converters[name] = {"seconds": summary([r["seconds"] for r in rows]), "peak_rss_mib": peak,
                            "peak_above_interpreter_mib": peak - baseline, "written_mib": written,
                            "rss_over_written": (peak - baseline) / written, "runs": rows}
    return {"settings": {"config": args.config, "sets": args.set, "ranks": args.ranks, "stage": args.stage,
                         "repeats": args.repeats, "precision": ranks["precision"], "params": ranks["params"]},
            "sharded": {**ranks, "tag_mb": size_mb, "median_s": medians, "blocked_over_tag": medians["blocked_s"] / medians["save_s"],
                        "background_export_median_s": statistics.median(ranks["background_export_s"]),
                        **{f"{key[:-2]}_mb_per_s": size_mb / medians[key]
                           for key in ("save_s", "load_s", "raw_save_s", "raw_load_s")}},
            "interpreter_peak_rss_mib": interpreter, "converters": converters}


def table(results: dict) -> str:
    s = results["sharded"]
    med = s["median_s"]
    io = format_table(["operation", "MB", "seconds (median)", "MB/s"], [
        [f"tag save (ZeRO {s['stage']}, {s['world_size']} ranks)", f"{s['tag_mb']:.0f}", f"{med['save_s']:.2f}",
         f"{s['save_mb_per_s']:.0f}"],
        ["one torch.save + fsync, same bytes", f"{s['tag_mb']:.0f}", f"{med['raw_save_s']:.2f}",
         f"{s['raw_save_mb_per_s']:.0f}"],
        ["tag load", f"{s['tag_mb']:.0f}", f"{med['load_s']:.2f}", f"{s['load_mb_per_s']:.0f}"],
        ["one torch.load, same bytes", f"{s['tag_mb']:.0f}", f"{med['raw_load_s']:.2f}",
         f"{s['raw_load_mb_per_s']:.0f}"]])
    stall = format_table(["training blocked per save", "seconds (median)", "/ tag write"], [
        ["the tag write itself", f"{med['save_s']:.2f}", "1.00"],
        ["CheckpointManager.save, export in the background", f"{med['blocked_s']:.2f}",
         f"{s['blocked_over_tag']:.2f}"],
        ["(the background export itself, not blocking)", f"{s['background_export_median_s']:.2f}", "-"],
        ["one torch.save + fsync, same bytes", f"{med['raw_save_s']:.2f}", "-"]])
    conv = format_table(["tool", "seconds (median)", "written MiB", "peak RSS MiB", "above interpreter MiB",
                         "/ written"], [
        [name, f"{c['seconds']['median']:.2f}", f"{c['written_mib']:.0f}", f"{c['peak_rss_mib']:.0f}",
         f"{c['peak_above_interpreter_mib']:.0f}", f"{c['rss_over_written']:.2f}"]
        for name, c in results["converters"].items()])
    interpreter = min(results["interpreter_peak_rss_mib"])
    return f"{io}\n\n{stall}\n\n{conv}\n(interpreter with torch + deepspeed imported: {interpreter:.0f} MiB)"
