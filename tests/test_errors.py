"""One error family: what ds_deblur raises on bad input is a ``DsDeblurError``, and a missing checkpoint is the
same error with the same message on every path that reads checkpoints."""
from __future__ import annotations

import inspect
import re

import pytest
import torch

from ds_deblur import errors
from ds_deblur.ckpt.cli import convert_main, inspect_main
from ds_deblur.ckpt.single_file import load_single_file
from ds_deblur.ckpt.tags import resolve
from ds_deblur.ckpt.weights import load_weights, read_weights
from ds_deblur.inference.cli import main as infer_main
from ds_deblur.zero.ema import read_ema_file
from support.train_utils import REPO, output_of, run_train


def test_every_error_class_derives_from_the_base():
    classes = [cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, BaseException)]
    assert len(classes) >= 10
    assert all(issubclass(cls, errors.DsDeblurError) for cls in classes)


def test_the_package_defines_its_errors_in_one_module():
    defined = [f"{path.relative_to(REPO)}: {line.strip()}" for path in sorted((REPO / "ds_deblur").rglob("*.py"))
               if path.name != "errors.py"
               for line in path.read_text().splitlines() if re.match(r"\s*class \w+\((\w+\.)?\w*(Error|Exception)\)", line)]
    assert [d for d in defined if "RunEnded" not in d] == []  # a stop signal of the train loop, not an error


def test_a_missing_checkpoint_reads_the_same_everywhere(tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    expected = f"Checkpoint not found: {missing}"
    readers = (resolve, read_weights, load_single_file, lambda path: load_weights(torch.nn.Linear(1, 1), path))
    for read in readers:
        with pytest.raises(errors.CheckpointNotFoundError) as err:
            read(missing)
        assert str(err.value) == expected
    for cli in (lambda: convert_main([str(missing), "--out", str(tmp_path / "x.pth")]),
                lambda: inspect_main([str(missing)])):
        with pytest.raises(SystemExit) as exit_:
            cli()
        assert exit_.value.code == 2 and f"error: {expected}" in capsys.readouterr().err
    code = infer_main(["--ckpt", str(missing), "--input", str(tmp_path), "--output", str(tmp_path / "out")])
    assert code == 2 and f"error: {expected}" in capsys.readouterr().err


@pytest.mark.slow
def test_the_trainer_says_the_same_for_resume_and_init_weights(data, tmp_path):
    missing = tmp_path / "nope.pth"
    for flag in ("--resume", "--init-weights"):
        proc = run_train(data, tmp_path / "run", sets=[], ranks=0, extra=[flag, str(missing)])
        assert proc.returncode == 2 and f"[train] error: Checkpoint not found: {missing}" in proc.stderr, \
            output_of(proc)
        assert "Traceback" not in proc.stderr


def test_a_damaged_ema_file_is_a_checkpoint_error_naming_it(tmp_path):
    # One reader serves the same-world EMA load and the gather of the EMA weights (other world size, single files).
    path = tmp_path / "ema_rank0.pt"
    torch.save({"decay": 0.9, "updates": 3, "flats": [torch.arange(4.0)]}, path)
    assert read_ema_file(path)["updates"] == 3 and torch.equal(read_ema_file(path)["flats"][0], torch.arange(4.0))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(errors.CheckpointFormatError, match=re.escape(str(path))):
        read_ema_file(path)
