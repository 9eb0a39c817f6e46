"""Per optimizer step the train loop makes one all-reduce and one host read (the loss, its parts, the non-finite
check, the stop vote and the gradient norm together), however many micro-batches the step has. Counted by
wrapping the calls (ds_deblur.testing.host_syncs), not by timing."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from ds_deblur.run_log import read_train_log
from support.train_utils import output_of, run_train

STEPS = 5
# Our own per optimizer step, on a step that is neither logged to TensorBoard, validated nor saved.
BOUND = {"collective": 1, "read": 1}


def per_step_counts(folder, rank: int) -> dict[int, Counter]:
    lines = (folder / f"rank{rank}.jsonl").read_text().splitlines()
    return {record["step"]: Counter(record["counts"]) for record in map(json.loads, lines)}


def by_kind(counts: Counter, owner: str) -> Counter:
    """{"collective": n, "read": n} of one caller package."""
    totals = Counter()
    for key, n in counts.items():
        kind, _, who = key.split(":")
        if who == owner:
            totals[kind] += n
    return totals


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.parametrize("accumulation", [1, 3])
def test_one_reduction_and_one_host_read_per_optimizer_step(data, tmp_path, accumulation):
    counts_dir = tmp_path / "syncs"
    proc = run_train(data, tmp_path / "run", sets=[f"TRAIN.TOTAL_STEPS={STEPS}", "LOG.LOG_EVERY_STEPS=1000",
                                                   "LOG.VAL_EVERY_STEPS=1000", "LOG.SAVE_EVERY_STEPS=1000",
                                                   f"TRAIN.GRADIENT_ACCUMULATION_STEPS={accumulation}"],
                     env={"DS_DEBLUR_COUNT_SYNCS": str(counts_dir)})
    assert proc.returncode == 0, output_of(proc)
    for rank in (0, 1):
        steps = per_step_counts(counts_dir, rank)
        assert sorted(steps) == list(range(1, STEPS))  # the last step ends the run before it is written
        for step in range(2, STEPS):  # step 1 is logged to TensorBoard
            ours = by_kind(steps[step], "ds_deblur")
            assert ours == BOUND, (step, steps[step])
            # The wrappers do see DeepSpeed's own: ZeRO 2's gradient reduction at least.
            assert by_kind(steps[step], "deepspeed")["collective"] >= 1, steps[step]
    log = read_train_log(tmp_path / "run")
    assert [r["step"] for r in log] == list(range(1, STEPS + 1))
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 for r in log)  # read with the one host read
