"""The package's ``__all__`` names what it exports, and every module stays under 800 lines."""

from __future__ import annotations

from pathlib import Path

import g2interp.activations as package


def test_all_is_importable_and_sorted():
    assert sorted(package.__all__) == list(package.__all__)
    for name in package.__all__:
        assert getattr(package, name) is not None


def test_modules_are_short():
    for path in Path(package.__file__).parent.glob("*.py"):
        assert len(path.read_text().splitlines()) < 800, path.name
