"""``ds-deblur convert`` and ``ds-deblur inspect``: the checkpoint tools.

    ds-deblur convert CKPT_DIR [--tag TAG] --out last.pth
    ds-deblur convert CKPT_DIR [--tag TAG] --weights-only [--ema] [--merge-lora] --out model.pth|model.safetensors
    ds-deblur inspect outputs/ckpts | outputs/ckpts/step_000500 | outputs/ckpts/last.pth [--json]

``convert``: CKPT_DIR is a checkpoint directory (its ``latest`` tag unless --tag is given) or a tag directory. Only
complete tags are read: the tag's ``COMMIT.json`` must be there and every file it lists must have its size.
``inspect``: a checkpoint directory (every tag, then the latest one), one tag, or a single file. Single files are
read with ``weights_only=True``; DeepSpeed tag files are pickles unpickled in full, so convert and inspect only
tags from your own runs. The work is done by ``ds_deblur.ckpt`` (``export``, ``describe``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from ds_deblur.errors import CheckpointNotFoundError, DsDeblurError


def convert_parser(prog: str = "ds-deblur convert") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert a DeepSpeed checkpoint tag into a single file: the full training state in the "
                    "original trainer's format (last.pth/best.pth, resumable on any world size and ZeRO stage) "
                    "or, with --weights-only, the fp32 model weights.")
    parser.add_argument("ckpt", metavar="CKPT_DIR", help="checkpoint directory (uses its 'latest' tag) or a tag "
                                                         "directory such as outputs/ckpts/step_000500")
    parser.add_argument("--tag", help="tag inside CKPT_DIR (default: the one named by CKPT_DIR/latest)")
    parser.add_argument("--out", required=True, help="output file: last.pth (full state), or with --weights-only "
                                                     "model.pth or model.safetensors")
    parser.add_argument("--weights-only", action="store_true",
                        help="write only the fp32 weights and buffers (a plain state dict; no optimizer)")
    parser.add_argument("--merge-lora", action="store_true",
                        help="with --weights-only: fold the LoRA adapters into their layers' weights, under the "
                             "plain layer names (S-VRT's {iter}_G_merged.pth), for runs without adapters")
    parser.add_argument("--ema", action="store_true",
                        help="with --weights-only: the EMA weights (runs with TRAIN.EMA_DECAY > 0; the full "
                             "last.pth holds both as state_dict and state_dict_ema)")
    return parser


def inspect_parser(prog: str = "ds-deblur inspect") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Show what a checkpoint holds: step, epoch, best PSNR, world size, ZeRO stage, precision, "
                    "which parts (model, optimizer, scheduler, loss scaler, RNG files) and their sizes.")
    parser.add_argument("path", metavar="PATH", help="a checkpoint directory (lists every tag and describes the "
                                                     "latest), a tag directory, or a single file (last.pth, "
                                                     "best.pth, model.pth, model.safetensors)")
    parser.add_argument("--json", action="store_true", help="print one machine-readable JSON object instead")
    return parser


def convert_main(argv: Optional[list[str]] = None) -> int:
    parser = convert_parser()
    args = parser.parse_args(argv)
    if args.ema and not args.weights_only:
        parser.error("--ema goes with --weights-only (the full single file holds both state_dict and "
                     "state_dict_ema)")
    if args.merge_lora and not args.weights_only:
        parser.error("--merge-lora goes with --weights-only (the full single file keeps the adapters to resume)")
    start = time.perf_counter()

    def work() -> Path:
        from ds_deblur.ckpt.export import export_tag
        return export_tag(args.ckpt, args.tag, args.out, args.weights_only, ema=args.ema,
                          merge_lora=args.merge_lora)

    out = _run(parser, work)
    if out is None:
        return 1
    what = ("fp32 EMA weights" if args.ema else "fp32 weights") if args.weights_only else "full training state"
    print(f"[convert] wrote {out} ({what}, {out.stat().st_size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def inspect_main(argv: Optional[list[str]] = None) -> int:
    parser = inspect_parser()
    args = parser.parse_args(argv)

    def work() -> dict:
        from ds_deblur.ckpt.describe import describe
        return describe(Path(args.path))

    info = _run(parser, work)
    if info is None:
        return 1
    from ds_deblur.ckpt.describe import format_text
    print(json.dumps(info, indent=2, default=str) if args.json else format_text(info))
    return 0


def _run(parser: argparse.ArgumentParser, work: Callable[[], object]) -> Optional[object]:
    """The tool's work with stdout kept for its own output; a missing path is a usage error (exit 2), any other
    error of ours is printed (None: exit 1)."""
    try:
        # DeepSpeed binds its log handler to the stdout of its first import (inside ``work``, which keeps --help
        # fast), and stdout is for the tool's own output (--json must parse).
        with contextlib.redirect_stdout(sys.stderr):
            return work()
    except CheckpointNotFoundError as err:
        parser.error(str(err))
    except DsDeblurError as err:
        print(f"error: {err}", file=sys.stderr)
    return None
