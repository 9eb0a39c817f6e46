"""``ds-deblur``: one command for every tool, each with its own --help, and no module of ours shadowing the
standard library (a script run from inside the package must still import the real one)."""
from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import ds_deblur
from ds_deblur.cli import TOOLS, main
from support.train_utils import REPO

DS_DEBLUR = Path(sys.executable).with_name("ds-deblur")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, timeout=300)


def test_help_lists_every_tool():
    proc = run(str(DS_DEBLUR), "--help")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line[:4] == "    " and line[4] != " "}
    assert listed == set(TOOLS), listed


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_each_tool_has_its_own_help(tool, capsys):
    with pytest.raises(SystemExit) as done:
        main([tool, "--help"])
    assert done.value.code == 0
    # train's usage shows its launcher form, the one multi-process runs use
    assert f"usage: {'ds_deblur/train.py' if tool == 'train' else 'ds-deblur ' + tool} " in capsys.readouterr().out


def test_an_unknown_tool_or_none_is_a_usage_error():
    for args in (["nope"], []):
        proc = run(str(DS_DEBLUR), *args)
        assert proc.returncode == 2 and "usage: ds-deblur" in proc.stderr, proc.stderr
    assert "invalid choice: 'nope'" in run(str(DS_DEBLUR), "nope").stderr


def test_python_dash_m_forms_run_the_same_tools():
    for args in (["-m", "ds_deblur", "convert", "--help"], ["-m", "ds_deblur.inference", "--help"]):
        proc = run(sys.executable, *args)
        assert proc.returncode == 0 and "usage: ds-deblur " in proc.stdout, proc.stderr


def test_no_module_of_ours_shadows_the_standard_library():
    names = {info.name.rsplit(".", 1)[-1] for info in pkgutil.walk_packages(ds_deblur.__path__, "ds_deblur.")}
    assert not names & set(sys.stdlib_module_names), names & set(sys.stdlib_module_names)
