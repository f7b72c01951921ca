"""The package's shape: leaf modules import nothing of g2interp, the model and the loaders do not import
each other's way round, no module is long, and nothing in the library names a development machine's path."""

from __future__ import annotations

import ast
from pathlib import Path

import g2interp

ROOT = Path(g2interp.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every module a file imports (at the top or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_leaf_modules_import_nothing_of_g2interp():
    for leaf in ("tokenizer.py", "constants.py", "files.py", "distributed.py", "cli_config.py"):
        ours = {m for m in _imports(ROOT / leaf) if m.startswith("g2interp")}
        assert ours <= {"g2interp.constants"}, (leaf, ours)


def test_the_model_does_not_import_the_loaders():
    for path in (ROOT / "model").glob("*.py"):
        assert not any(m.startswith("g2interp.loading") for m in _imports(path)), path.name


def test_modules_stay_under_600_lines():
    long = {
        str(p.relative_to(ROOT)): n
        for p in ROOT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) >= 600 and "moderation" not in p.parts
    }
    assert long == {}


def test_no_development_machine_paths_in_the_library():
    for path in ROOT.rglob("*.py"):
        if "moderation" in path.parts:
            continue  # another package's owners keep their own data paths
        text = path.read_text()
        assert "/work/" not in text and "shared/data" not in text, path
