"""``ds-deblur TOOL [options]``: every tool of ds_deblur behind one command (also ``python -m ds_deblur``).

Multi-process training keeps its launcher form: ``deepspeed --num_gpus=4 ds_deblur/train.py ...`` or
``torchrun --nproc_per_node=4 ds_deblur/train.py ...``; ``ds-deblur train`` is the same trainer in one process.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# tool -> (module, function taking argv and returning the exit code, one-line help). Modules are imported only
# for the tool that runs, so ``ds-deblur --help`` does not import torch or DeepSpeed.
TOOLS = {
    "train": ("ds_deblur.train", "main", "train under a DeepSpeed engine in this process (launchers: see above)"),
    "infer": ("ds_deblur.inference.cli", "main", "deblur whole sequences with a checkpoint; metrics when sharp "
                                                 "frames exist"),
    "convert": ("ds_deblur.ckpt.cli", "convert_main", "a DeepSpeed tag -> last.pth/best.pth or fp32 weights"),
    "inspect": ("ds_deblur.ckpt.cli", "inspect_main", "what a checkpoint directory, tag or single file holds"),
    "synth": ("ds_deblur.data.synth", "main", "generate synthetic spike-camera deblurring data"),
    "prepare": ("ds_deblur.data.prepare", "main", "precompute spike artifacts: the voxel cache and statistics, or "
                                                "S-VRT's tfp / raw_window / encoding25 files"),
    "check": ("ds_deblur.data.check", "main", "check a whole dataset and print a summary"),
    "spike-quality": ("ds_deblur.data.spike_quality", "main", "what a dataset's spike streams tell on their own"),
    "bench": ("ds_deblur.bench.__main__", "main", "benchmarks: engine, memory, checkpoint, data, model, infer, "
                                                  "ablation"),
    "config": ("ds_deblur.config.reference", "main", "the config reference: every key, default, limits, meaning"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds-deblur", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="tool", metavar="TOOL", required=True)
    for name, (_, _, text) in TOOLS.items():
        sub.add_parser(name, help=text, add_help=False)  # the tool parses its own arguments, --help included
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in TOOLS:
        parser.parse_args(argv[:1])  # prints the usage (or --help) and exits
    module_name, function, _ = TOOLS[argv[0]]
    tool = getattr(importlib.import_module(module_name), function)
    return int(tool(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
