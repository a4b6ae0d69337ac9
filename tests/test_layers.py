"""The package's layering (docs/architecture.md, "Module map"): a module imports only from its own
layer and the layers below it, never from above. Checked on the source, imports inside functions
included, so a lazy import cannot hide an upward dependency."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Module (or package prefix) -> layer, as in docs/architecture.md. The longest prefix wins.
LAYERS = {
    "l2o.io": 0,
    "l2o.threads": 0,
    "l2o.layout": 0,
    "l2o.data": 0,
    "l2o.compiling": 0,
    "l2o._version": 0,
    "l2o.tasks": 1,
    "l2o.rules": 2,
    "l2o.checkpoint": 2,
    "l2o.bundled": 2,
    "l2o.registry": 2,
    "l2o.optim": 2,
    "l2o.evaluation": 3,
    "l2o.training": 4,
    "l2o.report": 5,
    "l2o.reproduce": 5,
    "l2o.multiseed": 5,
    "l2o.measured": 5,
    "l2o.console": 6,
    "l2o.cli": 6,
    # The package root re-exports the public API: layers 0-4, never report (no matplotlib).
    "l2o": 4,
}


def layer_of(module: str) -> int:
    """The layer of ``module`` by its longest listed prefix."""
    best = None
    for prefix in LAYERS:
        if (module == prefix or module.startswith(prefix + ".")) and (
            best is None or len(prefix) > len(best)
        ):
            best = prefix
    if best is None:
        raise KeyError(module)
    return LAYERS[best]


def package_modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "l2o").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def l2o_imports(path: Path) -> set[str]:
    """Every ``l2o`` module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "l2o" or node.module.startswith("l2o."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "l2o")
    return found


MODULES = package_modules()


def test_every_module_has_a_layer():
    unknown = []
    for name in MODULES:
        try:
            layer_of(name)
        except KeyError:
            unknown.append(name)
    assert not unknown, f"add these modules to LAYERS and docs/architecture.md: {unknown}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_upward_import(name):
    own = layer_of(name)
    upward = sorted(d for d in l2o_imports(MODULES[name]) if layer_of(d) > own)
    assert not upward, f"{name} (layer {own}) imports from higher layers: {upward}"


def test_the_package_root_does_not_import_report():
    assert "l2o.report" not in l2o_imports(MODULES["l2o"])


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The check itself can fail: a rules module importing the trainer is flagged."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from l2o.training.trainer import Trainer\n")
    assert any(layer_of(d) > layer_of("l2o.rules.dm") for d in l2o_imports(bad))
