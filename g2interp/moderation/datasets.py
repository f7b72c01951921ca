"""Labelled moderation data in the shared JSONL format (one object per line).

Each row: ``text``; ``labels`` (harm type -> 0 / 1 / null); ``unsafe`` (0 / 1 / null); ``source``;
``kind`` (``prompt``, ``text`` or ``response``); rows of kind ``response`` also carry ``prompt``, the
conversation the reply answers (scored with the response template). ``null`` means the set does not say.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from g2interp.moderation.policies import UNSAFE, HarmType

TARGETS = (UNSAFE.name, *(t.value for t in HarmType))
"""Every label a row can carry: ``unsafe`` and the four harm types."""
KINDS = ("prompt", "text", "response")
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledText:
    """One labelled row."""

    text: str
    """The text to classify (the model's reply for kind ``response``)."""
    labels: dict[str, int | None]
    """Target name -> 1 (violates), 0 (does not), None (the set does not say)."""
    source: str
    """The set the row comes from."""
    kind: str = "prompt"
    """``prompt``/``text`` (scored with the prompt template) or ``response``."""
    prompt: str = ""
    """For responses: the conversation the reply answers (may be empty)."""
    extra: dict = field(default_factory=dict, compare=False)
    """The set's own fields (``orig_label`` ...), kept for analysis."""

    @property
    def is_response(self) -> bool:
        return self.kind == "response"


def parse_row(obj: dict, where: str) -> LabelledText:
    """One JSON object in the shared format, checked; ``where`` names it in errors."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'text' must be a non-empty string, got {text!r:.60}")
    kind = obj.get("kind", "prompt")
    if kind not in KINDS:
        raise ValueError(f"{where}: 'kind' must be one of {KINDS}, got {kind!r}")
    prompt = obj.get("prompt") or ""
    if not isinstance(prompt, str):
        raise ValueError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
    raw = dict(obj.get("labels") or {})
    if "unsafe" in obj:
        raw[UNSAFE.name] = obj["unsafe"]
    labels: dict[str, int | None] = {}
    for name in TARGETS:
        value = raw.get(name)
        if value is not None and value not in (0, 1):
            raise ValueError(f"{where}: label {name!r} must be 0, 1 or null, got {value!r}")
        labels[name] = None if value is None else int(value)
    extra = {
        k: v for k, v in obj.items() if k not in ("text", "labels", "unsafe", "kind", "prompt", "source")
    }
    return LabelledText(text, labels, str(obj.get("source", "")), kind, prompt, extra)


def iter_jsonl(path: Path):
    """``(line number, object)`` for each non-blank line of a JSONL file; a line that is not JSON raises
    a ValueError naming the file and line."""
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None


def read_jsonl(path: str | Path, source: str | None = None) -> list[LabelledText]:
    """Rows of one JSONL file; ``source`` overrides each row's ``source`` (default: the row's, else the folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a labelled set is a data.jsonl)")
    rows, empty = [], 0
    for n, obj in iter_jsonl(path):
        if isinstance(obj, dict) and isinstance(obj.get("text"), str) and not obj["text"].strip():
            empty += 1  # an empty reply has nothing to classify
            continue
        row = parse_row(obj, f"{path}:{n}")
        name = source or row.source or path.parent.name
        rows.append(LabelledText(row.text, row.labels, name, row.kind, row.prompt, row.extra))
    if empty:
        logger.info("%s: skipped %d rows with empty text", path, empty)
    if not rows:
        raise ValueError(f"{path} holds no rows with text")
    return rows


def labelled_sets(data_dir: str | Path) -> list[str]:
    """Names of the folders under ``data_dir`` that hold a ``data.jsonl`` with labels (not the corpus)."""
    data_dir = Path(data_dir)
    return sorted(p.parent.name for p in data_dir.glob("*/data.jsonl") if p.parent.name != "corpus")


def read_sets(data_dir: str | Path, names: Iterable[str] | None = None) -> dict[str, list[LabelledText]]:
    """Set name -> rows, for every labelled set under ``data_dir`` (or the ``names`` given)."""
    data_dir = Path(data_dir)
    names = list(names) if names is not None else labelled_sets(data_dir)
    if not names:
        raise FileNotFoundError(f"{data_dir} holds no labelled sets (folders with a data.jsonl)")
    return {name: read_jsonl(data_dir / name, source=name) for name in names}


def label_column(rows: Sequence[LabelledText], target: str) -> list[int | None]:
    """One target's labels over ``rows``."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; targets are {TARGETS}")
    return [r.labels[target] for r in rows]
