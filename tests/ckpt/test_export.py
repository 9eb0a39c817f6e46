"""Single-file exports in the background (ds_deblur.ckpt.export), on real DeepSpeed tags (tests/support/tag_factory.py)."""
from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest
import torch

from ds_deblur.ckpt import export
from ds_deblur.ckpt.export import BackgroundExporter, export_tag, stale_exports
from ds_deblur.ckpt.single_file import load_single_file
from support.tag_factory import reference, tag_step

# Each tag of a test run is a copy of a different real tag (tests/support/tag_factory.py): other weights (one rank's
# batches or two ranks', fp32, fp16 or bf16) and steps (3 or 8), so an export of the wrong tag shows.
SOURCES = {"step_000002": "z2_w1", "step_000003": "z2_w2", "step_000004": "z2_w2_fp16", "best": "z1_w2_bf16"}


def run_dir(tags: Path, tmp_path: Path, names=("step_000002", "step_000003", "step_000004")) -> Path:
    """A checkpoint dir holding the tags ``names``, each a copy of its real tag in SOURCES."""
    ckpts = tmp_path / "ckpts"
    for name in names:
        shutil.copytree(tags / "ckpts" / SOURCES[name], ckpts / name)
    return ckpts


def check_holds_tag(single: dict, tags: Path, name: str) -> None:
    """An exported file holds the step and the weights of tag ``name`` (its source's ranks' record at save) and
    the weights of no other tag in SOURCES."""
    source = SOURCES[name]
    assert single["step"] == tag_step(source), (name, single["step"])
    for other, other_source in SOURCES.items():
        weights = reference(tags, other_source)["at_save"]["weights"]
        same = all(torch.equal(single["state_dict"][k], v) for k, v in weights.items())
        assert same == (other == name), (name, other)


@pytest.fixture
def gated(monkeypatch):
    """Exports wait at a gate (the real export runs once it opens); returns (started, gate, tags exported in
    order): ``started`` is set once the thread holds an export at the gate."""
    started, gate, order = threading.Event(), threading.Event(), []
    real = export.export_single_file

    def held(tag_dir: Path, out_path: Path) -> Path:
        started.set()
        gate.wait(timeout=60)
        order.append(tag_dir.name)
        return real(tag_dir, out_path)

    monkeypatch.setattr(export, "export_single_file", held)
    return started, gate, order


@pytest.mark.dist
@pytest.mark.slow
def test_newer_requests_replace_waiting_ones_and_the_file_equals_the_cli(tags, tmp_path, gated):
    started, gate, order = gated
    ckpts = run_dir(tags, tmp_path)
    exporter = BackgroundExporter(ckpts, say=lambda _: None)
    exporter.submit("step_000002")
    assert started.wait(timeout=60)  # running, held at the gate
    exporter.submit("step_000003")
    exporter.submit("step_000004")  # replaces step_000003, still waiting
    assert exporter.in_use() == {"step_000002", "step_000004"}  # what retention must keep
    gate.set()
    exporter.wait()
    assert order == ["step_000002", "step_000004"] and not exporter.failures
    assert exporter.in_use() == set()
    ours = load_single_file(ckpts / "last.pth")
    cli = load_single_file(export_tag(ckpts, "step_000004", tmp_path / "cli.pth"))
    assert ours["meta"]["source_tag"] == "step_000004"
    check_holds_tag(ours, tags, "step_000004")
    assert all(torch.equal(ours["state_dict"][k], cli["state_dict"][k]) for k in cli["state_dict"])
    assert [p.name for p in ckpts.glob(".*")] == []  # no temporary left


@pytest.mark.dist
@pytest.mark.slow
def test_a_failed_export_keeps_the_previous_file_and_says_so(tags, tmp_path):
    ckpts = run_dir(tags, tmp_path, names=("step_000002", "step_000004"))
    said = []
    exporter = BackgroundExporter(ckpts, say=said.append)
    exporter.submit("step_000002")
    exporter.wait()
    check_holds_tag(load_single_file(ckpts / "last.pth"), tags, "step_000002")
    before = (ckpts / "last.pth").read_bytes()
    shutil.rmtree(ckpts / "step_000004")  # gone before its export ran (what retention must never do)
    exporter.submit("step_000004")
    exporter.wait()
    assert (ckpts / "last.pth").read_bytes() == before
    assert len(exporter.failures) == 1 and "step_000004" in said[0] and "previous last.pth is unchanged" in said[0]


@pytest.mark.dist
@pytest.mark.slow
def test_stale_exports_names_what_a_killed_run_left_behind(tags, tmp_path):
    ckpts = run_dir(tags, tmp_path, names=("step_000002", "best"))
    assert stale_exports(ckpts) == [("step_000002", "last.pth"), ("best", "best.pth")]  # nothing exported yet
    export_tag(ckpts, "step_000002", ckpts / "last.pth")
    export_tag(ckpts, "best", ckpts / "best.pth")
    check_holds_tag(load_single_file(ckpts / "last.pth"), tags, "step_000002")
    check_holds_tag(load_single_file(ckpts / "best.pth"), tags, "best")
    assert stale_exports(ckpts) == []
    (ckpts / "last.pth").write_bytes(b"torn")  # damaged: exported again
    assert stale_exports(ckpts) == [("step_000002", "last.pth")]
