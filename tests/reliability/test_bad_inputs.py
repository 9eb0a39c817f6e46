"""Bad inputs against a run that already has checkpoints: each is a clear error with a non-zero exit code, no
traceback, and nothing written over the existing checkpoints (one process; the batch case on 2 ranks)."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from support.files import digest
from support.train_utils import REPO, output_of, run_train

SETS = ["TRAIN.TOTAL_STEPS=2", "LOG.VAL_EVERY_STEPS=100", "LOG.SAVE_EVERY_STEPS=2"]


class Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad_inputs") / "run"
    proc = run_train(data, out, sets=SETS, ranks=0)
    assert proc.returncode == 0, output_of(proc)
    return out


def cases(run: Path, data: Path, tmp: Path) -> dict[str, tuple[dict, str]]:
    """name -> ({data, ds_json, sets (added), ranks, extra}: what differs from a good run, what the error says)."""
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("TRAIN: [1, 2\nDATA: {")
    other = tmp / "not_ours.pth"
    torch.save({"weights": torch.zeros(3)}, other)
    evil = tmp / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump(Evil(tmp / "code_ran"), handle)
    contradicting = tmp / "contradicting.json"
    contradicting.write_text(json.dumps({**json.loads((REPO / "ds_configs/cpu_fp32.json").read_text()),
                                         "train_micro_batch_size_per_gpu": 4}))
    indivisible = tmp / "indivisible.json"
    indivisible.write_text(json.dumps({**json.loads((REPO / "ds_configs/cpu_fp32.json").read_text()),
                                       "train_batch_size": 3}))
    broken_data = tmp / "broken_data"
    shutil.copytree(data, broken_data)
    next(broken_data.glob("train/*/spike/*.dat")).unlink()
    last = str(run / "ckpts/last.pth")
    return {
        "malformed YAML": (dict(extra=["--config", str(bad_yaml)]), "bad.yaml"),
        "unknown config key": (dict(sets=["TRAIN.LRR=1e-3"]), "TRAIN.LRR"),
        "DeepSpeed JSON contradicts the YAML": (dict(ds_json=str(contradicting)),
                                                "train_micro_batch_size_per_gpu=4 but the YAML gives TRAIN.BATCH_SIZE"),
        "world size does not divide the batch (2 ranks)": (dict(ds_json=str(indivisible), ranks=2),
                                                           "cannot be split over 2 ranks"),
        "checkpoint of another model preset": (dict(sets=["MODEL.PRESET=base"], extra=["--resume", last]),
                                               "MODEL.PRESET: 'tiny' -> 'base'"),
        ".pth that is not ours, to --resume": (dict(extra=["--resume", str(other)]),
                                               "not a ds_deblur single-file checkpoint"),
        "pickle carrying code, to --resume": (dict(extra=["--resume", str(evil)]), "was refused"),
        "pickle carrying code, to --init-weights": (dict(extra=["--init-weights", str(evil)]), "was refused"),
        "missing spike file in the data": (dict(data=broken_data), "spike"),
        "missing checkpoint": (dict(extra=["--resume", str(tmp / "nope.pth")]), "Checkpoint not found"),
    }


@pytest.mark.slow
def test_bad_inputs_are_clear_errors_that_leave_checkpoints_alone(run, data, tmp_path, record):
    before = digest(run / "ckpts")
    failures = []
    table = cases(run, data, tmp_path)
    for name, (spec, message) in table.items():
        proc = run_train(spec.get("data", data), run, spec.get("ds_json", "ds_configs/cpu_fp32.json"),
                         SETS + spec.get("sets", []), ranks=spec.get("ranks", 0), extra=spec.get("extra", []))
        ok = proc.returncode != 0 and message in proc.stderr and "Traceback" not in proc.stderr
        if not ok:
            failures.append(f"{name}: {output_of(proc)}")
        assert digest(run / "ckpts") == before, f"{name} changed the checkpoints"
    assert not (tmp_path / "code_ran").exists()  # the pickles were refused without running them
    assert not failures, "\n\n".join(failures)
    record({"area": "bad inputs", "case": "; ".join(table), "trials": len(table), "faults": len(table),
            "recovered": f"{len(table)}/{len(table)} clear errors, exit != 0, no traceback", "data_lost": 0,
            "notes": "checkpoints byte-identical afterwards; no pickle code ran"})
