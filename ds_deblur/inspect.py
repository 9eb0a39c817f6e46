"""What a checkpoint holds: a checkpoint directory, one DeepSpeed tag, or a single file.

    python -m ds_deblur.inspect outputs/ckpts                 # every tag (complete or not), then the latest one
    python -m ds_deblur.inspect outputs/ckpts/step_000500     # one tag
    python -m ds_deblur.inspect outputs/ckpts/last.pth [--json]

Single files (``last.pth``, ``best.pth``, weights exports) are read with ``weights_only=True``. Tag files are
DeepSpeed pickles and are unpickled in full: inspect only your own runs' tags. The work is ``ds_deblur.ckpt.describe``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Optional

from ds_deblur.errors import CheckpointNotFoundError, DsDeblurError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ds_deblur.inspect",
        description="Show what a checkpoint holds: step, epoch, best PSNR, world size, ZeRO stage, precision, "
                    "which parts (model, optimizer, scheduler, loss scaler, RNG files) and their sizes.")
    parser.add_argument("path", metavar="PATH", help="a checkpoint directory (lists every tag and describes the "
                                                     "latest), a tag directory, or a single file (last.pth, "
                                                     "best.pth, model.pth, model.safetensors)")
    parser.add_argument("--json", action="store_true", help="print one machine-readable JSON object instead")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            # Imported here: DeepSpeed binds its log handler to the stdout of its first import, and stdout is for
            # the description (--json must parse); --help also stays fast without it.
            from ds_deblur.ckpt.describe import describe, format_text
            info = describe(Path(args.path))
    except CheckpointNotFoundError as err:
        parser.error(str(err))
    except DsDeblurError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2, default=str) if args.json else format_text(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
