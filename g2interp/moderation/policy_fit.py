"""Custom policies from labelled examples: a calibrated probe head for a new policy in about a minute.

The examples run through the moderator's own template and model once; a pooled head (weighted logistic
regression on the mean and last-token residuals of the shipped heads' layers) is fitted on a seeded,
stratified 75 % and calibrated (Platt, balanced threshold) on the other 25 %, whose AU-PRC is recorded in
the head's metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from g2interp.moderation.datasets import iter_jsonl
from g2interp.moderation.fit import calibrate, fit_pooled, raw_logits
from g2interp.moderation.probe import ProbeHead

if TYPE_CHECKING:
    from g2interp.moderation.moderator import Moderator

logger = logging.getLogger(__name__)
DEFAULT_LAYERS = (6, 9, 12)
MIN_PER_CLASS = 8
LABEL_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "yes": 1, "no": 0, "unsafe": 1, "safe": 0}


class PolicyFit(NamedTuple):
    """What ``Moderator.fit_policy`` returns."""

    head: ProbeHead
    """The fitted, calibrated head (already added to the moderator)."""
    val_ap: float
    """AU-PRC on the held-out 25 % of the examples."""
    n_train: int
    """Examples the head was fitted on."""
    n_val: int
    """Examples it was calibrated and measured on."""


def check_labels(labels: Sequence, n: int) -> np.ndarray:
    """0/1 labels (ints, bools or the words in ``LABEL_WORDS``), both classes, ``MIN_PER_CLASS`` each."""
    if len(labels) != n:
        raise ValueError(f"{n} texts but {len(labels)} labels: pass one label per text")
    out = []
    for i, v in enumerate(labels):
        if isinstance(v, str) and v.strip().lower() in LABEL_WORDS:
            v = LABEL_WORDS[v.strip().lower()]
        if isinstance(v, bool | np.bool_):
            v = int(v)
        if v not in (0, 1) or (isinstance(v, float) and not float(v).is_integer()):
            raise ValueError(f"label {i} is {v!r}; labels must be 0/1 (or true/false, yes/no, unsafe/safe)")
        out.append(int(v))
    y = np.asarray(out)
    counts = {c: int((y == c).sum()) for c in (0, 1)}
    if min(counts.values()) < MIN_PER_CLASS:
        raise ValueError(
            f"the examples hold {counts[1]} violating (1) and {counts[0]} allowed (0) texts; a policy needs "
            f"both classes, at least {MIN_PER_CLASS} of each (a few hundred in all is better)"
        )
    return y


def fit_policy(
    moderator: Moderator,
    name: str,
    texts: Sequence[str],
    labels: Sequence,
    *,
    prompts: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    replace: bool = False,
    seed: int = 0,
) -> PolicyFit:
    """Fit, calibrate and add a head named ``name`` (see ``Moderator.fit_policy``)."""
    from g2interp.moderation.moderator import _as_texts

    if not isinstance(name, str) or not name.strip() or "." in name:
        raise ValueError(f"a policy name must be a non-empty string without dots, got {name!r}")
    texts = _as_texts(texts, "texts")
    y = check_labels(labels, len(texts))
    if prompts is not None:
        prompts = _as_texts(prompts, "prompts")
        if len(prompts) != len(texts):
            raise ValueError(f"{len(prompts)} prompts but {len(texts)} texts: pass one prompt per response")
        encoded = [moderator.encoder.encode_response(p, t) for p, t in zip(prompts, texts, strict=True)]
    else:
        encoded = [moderator.encoder.encode_prompt(t) for t in texts]
    n_layers = moderator.model.cfg.n_layers
    layers = tuple(layers) if layers is not None else tuple(x for x in DEFAULT_LAYERS if x < n_layers)
    if not layers:
        layers = (n_layers // 2,)
    feats = moderator.token_features(encoded, layers)
    rng = np.random.default_rng(seed)
    val = np.zeros(len(y), bool)
    for c in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == c))
        val[idx[: max(1, round(0.25 * len(idx)))]] = True
    tr, va = np.flatnonzero(~val), np.flatnonzero(val)
    w_tr = np.where(y[tr] == 1, 0.5 / y[tr].mean(), 0.5 / (1 - y[tr].mean()))
    w_va = np.where(y[va] == 1, 0.5 / y[va].mean(), 0.5 / (1 - y[va].mean()))
    head = fit_pooled(feats.subset(tr), y[tr], w_tr, layers, name=name, l2=1e-2)
    raw_va = raw_logits(head, feats.subset(va)).numpy()
    from sklearn.metrics import average_precision_score

    ap = float(average_precision_score(y[va], raw_va))
    head = calibrate(
        head, raw_va, y[va], w_va, val_ap=ap, n_train=len(tr), n_val=len(va), fitted_from="examples"
    )
    moderator.add_head(head, replace=replace)
    logger.info("policy %r: head fitted on %d examples, held-out AP %.3f on %d", name, len(tr), ap, len(va))
    return PolicyFit(head, ap, len(tr), len(va))


def read_examples(path: str | Path) -> tuple[list[str], list, list[str] | None]:
    """``text``/``label`` (optional ``prompt``) per JSONL line -> texts, labels, prompts (or None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such examples file (JSONL with 'text' and 'label' per line)")
    texts, labels, prompts = [], [], []
    for n, obj in iter_jsonl(path):
        if not isinstance(obj, dict) or "text" not in obj or "label" not in obj:
            raise ValueError(f"{path}:{n}: each line needs 'text' and 'label' (0/1); got {str(obj)[:80]}")
        texts.append(obj["text"])
        labels.append(obj["label"])
        prompts.append(obj.get("prompt"))
    if not texts:
        raise ValueError(f"{path} holds no examples")
    if all(p is None for p in prompts):
        return texts, labels, None
    if any(p is None for p in prompts):
        raise ValueError(f"{path}: 'prompt' is given on some lines only; give it on all (responses) or none")
    return texts, labels, prompts
