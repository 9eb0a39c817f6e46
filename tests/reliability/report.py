"""Run the full reliability suite and print its table (the tables in docs/reliability.md come from here).

    .venv/bin/python tests/reliability/report.py [--trials 25] [--load-steps 200] [--seed 2026] [--out FILE.json]

CI runs the same tests with fewer trials (tests/reliability/reliability_settings.py). Exit code: pytest's.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("area", "case", "trials", "faults", "recovered", "data_lost", "notes")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=25, help="SIGKILL trials of the kill-anywhere test, per ZeRO stage "
                                                                "(2 and 3)")
    parser.add_argument("--load-steps", type=int, default=200, help="optimizer steps of the load run")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as results:
        env = {**os.environ, "RELIABILITY_FULL": "1", "RELIABILITY_TRIALS": str(args.trials),
               "RELIABILITY_SEED": str(args.seed), "RELIABILITY_LOAD_STEPS": str(args.load_steps),
               "RELIABILITY_RESULTS": results}
        started = time.time()
        code = subprocess.call([sys.executable, "-m", "pytest", str(HERE), "-q", "-p", "no:cacheprovider"],
                               cwd=HERE.parents[1], env=env)
        path = Path(results) / "results.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    print(f"\nReliability suite: {len(rows)} results in {time.time() - started:.0f} s (pytest exit code {code})\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row.get(column, "")) for column in COLUMNS) + " |")
    if args.out:
        args.out.write_text(json.dumps({"trials": args.trials, "seed": args.seed, "load_steps": args.load_steps,
                                        "pytest_exit_code": code, "rows": rows}, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main())
