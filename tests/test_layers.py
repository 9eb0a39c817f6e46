"""The package's layers (docs/architecture.md): a module imports only from the layers below its own, so the
checkpoint package never reaches up into the trainer, and DeepSpeed's internals stay in ``ds_deblur.zero``."""
from __future__ import annotations

import ast
from pathlib import Path

import ds_deblur

# Lowest first. A unit is a top-level module or subpackage of ds_deblur.
LAYERS = [
    {"errors"},
    {"config"},
    {"distributed", "metrics", "losses", "models", "data", "testing"},
    {"zero", "phases"},
    {"ckpt"},
    {"run_log", "divergence", "inference", "two_run"},
    {"evaluate"},
    {"train", "bench"},
    {"cli"},
    {"__main__"},
]
LAYER_OF = {unit: level for level, units in enumerate(LAYERS) for unit in units}
PACKAGE = Path(ds_deblur.__file__).parent


def unit_of(module: str) -> str:
    """'ds_deblur.ckpt.tags' -> 'ckpt'."""
    return module.split(".")[1]


def imported_units(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "ds_deblur":
            units |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ds_deblur."):
            units.add(unit_of(node.module))
        elif isinstance(node, ast.Import):
            units |= {unit_of(a.name) for a in node.names if a.name.startswith("ds_deblur.")}
    return units


def test_every_unit_has_a_layer():
    units = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert units == set(LAYER_OF), units ^ set(LAYER_OF)


def test_modules_import_only_from_lower_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        own = parts[0]
        for unit in imported_units(path) - {own}:
            if LAYER_OF[unit] >= LAYER_OF[own]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} imports ds_deblur.{unit}")
    assert not upward, upward
