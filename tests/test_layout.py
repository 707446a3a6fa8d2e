"""The package's layers: each imports only the layers below it (docs/extending.md's Layout lists them)."""

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "src" / "vaelab"
# Bottom to top; a unit may import its own layer's and lower layers' units, never a higher one's.
LAYERS = [
    {"errors", "files", "settings", "catalog", "lightning_compat"},
    {"rundir", "checkpoints"},
    {"naming", "reports"},
    {"models", "data"},
    {"evaluation"},
    {"training"},
    {"config", "sweeps"},
    {"tasks"},
    {"api"},  # vaelab.train and vaelab.load: the entry points' tasks, from Python
]


def _unit(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def _imports(path: Path) -> set[str]:
    units = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vaelab."):
            units.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            units.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("vaelab."))
    return units


def test_no_layer_imports_a_layer_above_it():
    level = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
    upward = []
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue
        assert unit in level, f"{unit} is in no layer of tests/test_layout.py (and docs/extending.md's Layout)"
        upward += [f"{path.relative_to(PACKAGE)} imports vaelab.{target}" for target in _imports(path)
                   if level[target] > level[unit]]
    assert not upward, "\n".join(upward)
