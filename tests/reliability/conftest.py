"""The reliability suite: faults injected into real runs (2 CPU ranks under the deepspeed launcher, or one process).

CI runs it with few trials (the defaults below); ``python tests/reliability/report.py`` runs the full suite and
prints the table that the README shows. Each test records what it did through the ``record`` fixture."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from support.train_utils import make_dataset

from reliability_settings import RESULTS_ENV


@pytest.fixture(scope="session")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("reliability_data") / "synth")


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
