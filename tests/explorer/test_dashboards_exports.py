"""``g2interp.dashboards`` exports what it defines, imports no UI framework, and keeps its modules short."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import g2interp.dashboards as package

REPO = Path(__file__).resolve().parents[2]


def test_all_is_importable_and_sorted():
    assert sorted(package.__all__) == list(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None


def test_library_never_imports_streamlit():
    code = (
        "import sys, g2interp.dashboards, g2interp.dashboards.figures, g2interp.dashboards.cli; "
        "sys.exit('streamlit' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_modules_are_short():
    for folder in (Path(package.__file__).parent, REPO / "apps", REPO / "apps" / "explorer_ui"):
        for path in folder.glob("*.py"):
            assert len(path.read_text().splitlines()) < 800, path
