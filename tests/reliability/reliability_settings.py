"""How much the reliability suite does: CI's defaults here; tests/reliability/report.py sets the full run's."""
import os

# Kill trials per ZeRO stage (2 and 3; the full run uses 25 each), their seed, and the length of the load run in
# optimizer steps.
TRIALS = int(os.environ.get("RELIABILITY_TRIALS", "2"))
SEED = int(os.environ.get("RELIABILITY_SEED", "2026"))
LOAD_STEPS = int(os.environ.get("RELIABILITY_LOAD_STEPS", "30"))
RESULTS_ENV = "RELIABILITY_RESULTS"  # a folder: each test appends its row to results.jsonl there
# The full run also covers the slow cases CI leaves to it (fp16 through the CPU opt-in in the numerical faults).
FULL = os.environ.get("RELIABILITY_FULL") == "1"
