"""``ds-deblur bench NAME [options] [--out FILE.json]``: run one benchmark, print its table, save JSON."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

from ds_deblur.bench import __doc__ as overview
from ds_deblur.bench.common import host

# benchmark name -> its module in this package
MODULES = {"engine": "training", "memory": "memory", "checkpoint": "checkpoint", "data": "data", "model": "model",
           "infer": "infer", "ablation": "ablation", "svrt": "svrt",
           "precision": "precision"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ds-deblur bench", description=overview,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="name", metavar="NAME", required=True)
    # One line per benchmark, from the package docstring's list ("NAME  what it measures").
    lines = {words[0]: words[1] for words in (line.split(None, 1) for line in overview.splitlines())
             if len(words) == 2 and words[0] in MODULES}
    for name, module_name in MODULES.items():
        module = importlib.import_module(f"ds_deblur.bench.{module_name}")
        child = sub.add_parser(name, help=lines[name],
                               description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(child)
        child.add_argument("--out", type=Path, help="write the results, with every raw timing, to this JSON file")
        child.add_argument("--work-dir", type=Path,
                           help="where runs write their data and checkpoints (default: a temporary folder, removed "
                                "afterwards; its disk is the one checkpoint speed measures)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"ds_deblur.bench.{MODULES[args.name]}")
    if args.out is not None and not args.out.parent.is_dir():
        print(f"bench: --out {args.out}: folder {args.out.parent} does not exist", file=sys.stderr)
        return 2
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    machine = host()
    with tempfile.TemporaryDirectory(dir=args.work_dir, prefix=f"bench_{args.name}_") as work:
        try:
            results = module.run(args, Path(work))
        except (RuntimeError, ValueError) as err:
            print(f"bench {args.name}: {err}", file=sys.stderr)
            return 1
    results = {**results, "benchmark": args.name, "host": machine,
               "load_average_end": os.getloadavg(), "seconds": time.perf_counter() - started}
    print(module.table(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"[bench {args.name}] results -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
