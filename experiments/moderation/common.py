"""Paths and helpers shared by the moderation experiments (run from anywhere; outputs in runs/moderation)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from g2interp.moderation.datasets import LabelledText  # noqa: E402
from g2interp.moderation.template import EncodedText, TemplateEncoder  # noqa: E402

DATA_DIR = Path(os.environ.get("G2INTERP_SHARED_DATA", ROOT.parent / "shared" / "data"))  # ../shared/data
RUN_DIR = ROOT / "runs" / "moderation"
TOKENS_DIR = RUN_DIR / "tokens"
LOSO_DIR = RUN_DIR / "loso"


def encode_rows(encoder: TemplateEncoder, rows: Sequence[LabelledText]) -> list[EncodedText]:
    """Prompt template for prompts/texts, response template (with the row's prompt) for responses."""
    return [
        encoder.encode_response(r.prompt, r.text) if r.is_response else encoder.encode_prompt(r.text)
        for r in rows
    ]


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def read_all():
    """Every shared labelled set, in a fixed order: (rows, set name per row)."""
    from g2interp.moderation.datasets import labelled_sets, read_jsonl

    rows = []
    for name in labelled_sets(DATA_DIR):
        rows.extend(read_jsonl(DATA_DIR / name, source=name))
    return rows


def feature_files(names):
    out = []
    for name in names:
        k = 0
        while (path := TOKENS_DIR / f"{name}.{k}.safetensors").exists():
            out.append(path)
            k += 1
    return out


def load_features(rows, layers, keep=None, stems=None):
    """TokenFeatures (bf16, with texts) of ``rows`` (as ``read_all`` orders them; ``stems``: the feature
    files' names in that order, default each set's name) from runs/moderation/tokens, only rows ``keep``."""
    import numpy as np
    import torch
    from safetensors import safe_open

    from g2interp.moderation.features import TokenFeatures

    stems = stems or list(dict.fromkeys(r.source for r in rows))
    files = [p for stem in stems for p in feature_files([stem])]
    lengths, d_model = [], 0
    for path in files:
        with safe_open(str(path), "pt") as f:
            off = f.get_tensor("offsets")
            lengths.append(off[1:] - off[:-1])
            d_model = f.get_slice("last_NLM").get_shape()[-1]  # the residual width, from the file
    lengths = torch.cat(lengths)
    if len(lengths) != len(rows):
        raise RuntimeError(f"features for {len(lengths)} rows, table has {len(rows)}: extract first")
    keep = np.arange(len(rows)) if keep is None else np.asarray(keep)
    mask = torch.zeros(len(rows), dtype=torch.bool)
    mask[torch.as_tensor(keep)] = True
    if not (np.diff(keep) > 0).all():
        raise ValueError("keep must be increasing")
    kept_len = lengths[mask]
    acts = torch.empty(int(kept_len.sum()), len(layers), d_model, dtype=torch.bfloat16)
    last = torch.empty(len(keep), len(layers), d_model, dtype=torch.bfloat16)
    row0, tok, out_row = 0, 0, 0
    for path in files:
        with safe_open(str(path), "pt") as f:
            have = [int(x) for x in f.metadata()["layers"].split(",")]
            li = [have.index(x) for x in layers]
            off = f.get_tensor("offsets")
            n = len(off) - 1
            m = mask[row0 : row0 + n]
            if m.any():
                a = f.get_tensor("acts_TLM")
                seg = torch.repeat_interleave(torch.arange(n), off[1:] - off[:-1])
                sel = a[m[seg]][:, li]
                acts[tok : tok + len(sel)] = sel
                tok += len(sel)
                k = int(m.sum())
                last[out_row : out_row + k] = f.get_tensor("last_NLM")[m][:, li]
                out_row += k
                del a, sel
        row0 += n
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), kept_len.cumsum(0)])
    texts = tuple(rows[i].text for i in keep)
    return TokenFeatures(acts, offsets, last, tuple(layers), texts)


AUG_JSONL = RUN_DIR / "augment" / "data.jsonl"


def load_table(target, layers=None, augment=True):
    """Rows labelled for ``target`` (shared sets, then augmented rows if extracted), with labels, sets,
    splits (``aug`` for augmented rows) and features (None when ``layers`` is None: texts only)."""
    import numpy as np
    import torch

    from g2interp.moderation.datasets import read_jsonl
    from g2interp.moderation.features import TokenFeatures
    from g2interp.moderation.recipe import split_of

    shared = read_all()
    ready = layers is None or feature_files(["augment"])
    aug = read_jsonl(AUG_JSONL) if augment and AUG_JSONL.exists() and ready else []
    rows_all = shared + aug
    keep = [i for i, r in enumerate(rows_all) if r.labels[target] is not None]
    rows = [rows_all[i] for i in keep]
    split = np.array([split_of(r) if i < len(shared) else "aug" for i, r in zip(keep, rows, strict=True)])
    y = np.array([r.labels[target] for r in rows])
    sets = np.array([r.source for r in rows])
    if layers is None:
        z = torch.zeros(0, 1, 1)
        feats = TokenFeatures(z, torch.zeros(len(rows) + 1, dtype=torch.long), torch.zeros(len(rows), 1, 1), (0,),
                              tuple(r.text for r in rows))  # fmt: skip
    else:
        stems = list(dict.fromkeys(r.source for r in shared)) + (["augment"] if aug else [])
        feats = load_features(rows_all, layers, keep, stems=stems)
    return rows, y, sets, split, feats
