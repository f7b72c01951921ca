"""The g2interp command line and the public API's exports."""

from __future__ import annotations

import json

import g2interp
from g2interp.cli import main


def test_info_json(tiny_checkpoint, capsys):
    kind, hf, folder = tiny_checkpoint
    assert main(["info", str(folder), "--json", "--all-hooks"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["architecture"] == ("gemma2" if kind == "gemma2" else "gemma3_text")
    assert info["n_params"] == sum(p.numel() for p in hf.parameters())
    assert "blocks.3.hook_resid_post" in info["hook_names"]


def test_info_human_readable(tiny_checkpoint, capsys):
    assert main(["info", str(tiny_checkpoint[2])]) == 0
    out = capsys.readouterr().out
    assert "layer types (S sliding 6, G global): SG" in out


def test_missing_source_is_a_clear_error(capsys, tmp_path):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "not found" in capsys.readouterr().err


def test_exported_members_complete():
    """Every public name defined at the package root is in __all__, and __all__ names exist."""
    public = {
        n
        for n in dir(g2interp)
        if not n.startswith("_") and not isinstance(getattr(g2interp, n), type(g2interp))
    }
    assert public <= set(g2interp.__all__)
    assert all(hasattr(g2interp, n) for n in g2interp.__all__)
