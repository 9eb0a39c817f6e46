"""The reliability suite: faults injected into real runs (2 CPU ranks under the deepspeed launcher, or one process).

CI runs it with few trials (the defaults below); ``python tests/reliability/report.py`` runs the full suite and
prints the table that docs/reliability.md shows. Each test records what it did through the ``record`` fixture."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reliability_settings import RESULTS_ENV


@pytest.fixture
def record(request):
    """Call with a row {area, case, trials, faults, recovered, data_lost, notes}; kept in RELIABILITY_RESULTS."""
    rows: list[dict] = []
    yield rows.append
    target = os.environ.get(RESULTS_ENV)
    if target:
        with open(Path(target) / "results.jsonl", "a") as handle:
            for row in rows:
                handle.write(json.dumps({"test": request.node.name, **row}) + "\n")
