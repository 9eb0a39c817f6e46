"""DeepSpeed tag -> single file: ``last.pth``/``best.pth`` (full training state) or an fp32 weights export.

    python -m ds_deblur.convert CKPT_DIR [--tag TAG] --out last.pth
    python -m ds_deblur.convert CKPT_DIR [--tag TAG] --weights-only [--ema] --out model.pth|model.safetensors

CKPT_DIR is a checkpoint directory (its ``latest`` tag unless --tag is given) or a tag directory itself. Only
complete tags are read: the trainer's ``COMMIT.json`` must be there and every file it lists must have its size.
The work is done by ``ds_deblur.ckpt`` (``export.export_tag``: ``gather`` reads the ZeRO partitions,
``single_file`` and ``weights`` build the outputs); DeepSpeed tag files are unpickled in full, so convert only tags from your own runs.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Optional

from ds_deblur.errors import CheckpointNotFoundError, DsDeblurError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ds_deblur.convert",
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
    parser.add_argument("--ema", action="store_true",
                        help="with --weights-only: the EMA weights (runs with TRAIN.EMA_DECAY > 0; the full "
                             "last.pth holds both as state_dict and state_dict_ema)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.ema and not args.weights_only:
        parser.error("--ema goes with --weights-only (the full single file holds both state_dict and "
                     "state_dict_ema)")
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):
            # Imported here: DeepSpeed binds its log handler to the stdout of its first import, and stdout is for the
            # one line this prints; --help also stays fast without it.
            from ds_deblur.ckpt.export import export_tag
            out = export_tag(args.ckpt, args.tag, args.out, args.weights_only, ema=args.ema)
    except CheckpointNotFoundError as err:
        parser.error(str(err))
    except DsDeblurError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    what = ("fp32 EMA weights" if args.ema else "fp32 weights") if args.weights_only else "full training state"
    print(f"[convert] wrote {out} ({what}, {out.stat().st_size / 2**20:.1f} MiB) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
