"""Fitting probe heads on token features: pooled and attention probes, lexical heads, blends, calibration.

Every fit takes features, 0/1 labels and per-row weights (see ``recipe.balance_weights``); calibration
(Platt) and the default threshold (the balanced operating point: weighted TPR - FPR at its maximum) are
fitted on separate validation rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
from torch import Tensor

from g2interp.moderation import lexical
from g2interp.moderation.features import TokenFeatures
from g2interp.moderation.probe import HeadConfig, ProbeHead

logger = logging.getLogger(__name__)


def _as_tensor(x, dtype=torch.float32) -> Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _rows(feats: TokenFeatures, rows) -> Tensor:
    """The rows to train on (all by default), checked against the features."""
    if rows is None:
        return torch.arange(len(feats))
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    if rows.ndim != 1 or (len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(feats))):
        raise ValueError(f"rows must be indices into the {len(feats)} feature rows")
    return rows


def _check(feats: TokenFeatures | Sequence[str], y, w, n: int | None = None) -> tuple[Tensor, Tensor]:
    n = len(feats) if n is None else n
    y_N, w_N = _as_tensor(y), _as_tensor(w)
    if y_N.shape != (n,) or w_N.shape != (n,):
        raise ValueError(f"labels {tuple(y_N.shape)} and weights {tuple(w_N.shape)} must match {n} rows")
    if not set(torch.unique(y_N).tolist()) == {0.0, 1.0}:
        raise ValueError("labels must be 0 and 1, and both classes must be present")
    return y_N, w_N / w_N.mean()


@torch.no_grad()
def raw_logits(head: ProbeHead, feats: TokenFeatures, chunk: int = 2048) -> Tensor:
    """Uncalibrated logits [N], in chunks of texts."""
    head.eval()
    return torch.cat([head.raw(part) for part in feats.chunks(chunk)])


def _pooled_matrix(feats: TokenFeatures, layers: Sequence[int]) -> Tensor:
    return torch.cat([part.pooled(layers) for part in feats.chunks()])


def fit_pooled(
    feats: TokenFeatures,
    y,
    w,
    layers: Sequence[int],
    *,
    name: str = "pooled",
    l2: float = 1e-3,
    steps: int = 150,
    rows=None,
) -> ProbeHead:
    """Weighted logistic regression on standardised mean + last pooling (L-BFGS, L2 penalty ``l2``).

    ``rows``: train on these feature rows only (``y`` and ``w`` follow them), without copying features."""
    rows = _rows(feats, rows)
    y_N, w_N = _check(feats, y, w, len(rows))
    x_NF = _pooled_matrix(feats, layers)[rows]
    head = ProbeHead(HeadConfig(name, "pooled", tuple(layers), feats.acts_TLM.shape[-1]))
    head.mean_F.copy_((w_N[:, None] * x_NF).sum(0) / w_N.sum())
    head.scale_F.copy_(((w_N[:, None] * (x_NF - head.mean_F) ** 2).sum(0) / w_N.sum()).sqrt().clamp(min=1e-6))
    z_NF = (x_NF - head.mean_F) / head.scale_F
    del x_NF
    params = [head.weight_F, head.bias]
    opt = torch.optim.LBFGS(params, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        logit_N = z_NF @ head.weight_F + head.bias
        loss = (
            w_N * torch.nn.functional.binary_cross_entropy_with_logits(logit_N, y_N, reduction="none")
        ).mean()
        loss = loss + l2 * head.weight_F.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head.eval()


def fit_attention(
    feats: TokenFeatures,
    y,
    w,
    layers: Sequence[int],
    *,
    name: str = "attention",
    n_queries: int = 4,
    epochs: int = 6,
    batch_texts: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 1e-2,
    l2: float = 0.0,
    seed: int = 0,
    rows=None,
) -> ProbeHead:
    """Attention-pooled probe trained with AdamW on weighted BCE over random batches of texts.

    Queries start at zero (every token weighted equally: mean pooling), values at zero. ``l2``: penalty on
    the squared queries and values added to each batch's loss (as ``fit_pooled``'s; strong penalties
    transfer better to unseen sets). ``rows``: train on these feature rows only (``y`` and ``w`` follow
    them), without copying features.
    """
    rows = _rows(feats, rows)
    y_N, w_N = _check(feats, y, w, len(rows))
    g = torch.Generator().manual_seed(seed)
    head = ProbeHead(
        HeadConfig(name, "attention", tuple(layers), feats.acts_TLM.shape[-1], n_queries=n_queries)
    )
    sample = feats.subset(rows[torch.randperm(len(rows), generator=g)[:4096]])
    x_TF, _ = sample.tokens(layers)
    head.mean_F.copy_(x_TF.mean(0))
    head.scale_F.copy_(x_TF.std(0).clamp(min=1e-6))
    del x_TF
    params = [head.query_FH, head.value_FH, head.bias]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    n_steps = epochs * -(-len(rows) // batch_texts)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=n_steps, pct_start=0.1)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=g)
        for start in range(0, len(rows), batch_texts):
            idx = order[start : start + batch_texts]
            part = feats.subset(rows[idx])
            x_TF, seg_T = part.tokens(layers)
            logit_B = head.attend(x_TF, seg_T, len(idx))
            loss = (
                w_N[idx]
                * torch.nn.functional.binary_cross_entropy_with_logits(logit_B, y_N[idx], reduction="none")
            ).mean()
            if l2:
                loss = loss + l2 * (head.query_FH.square().sum() + head.value_FH.square().sum())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


def fit_lexical(
    texts: Sequence[str], y, w, *, name: str = "lexical", n_buckets: int = 1 << 18, C: float = 4.0
) -> ProbeHead:
    """Hashed TF-IDF + weighted logistic regression (scikit-learn, L2, inverse strength ``C``)."""
    from sklearn.linear_model import LogisticRegression

    y_N, w_N = _check(texts, y, w)
    idf_V = lexical.fit_idf(texts, n_buckets)
    x = lexical.tfidf(texts, idf_V)
    clf = LogisticRegression(C=C, max_iter=1000).fit(x, y_N.numpy(), sample_weight=w_N.numpy())
    head = ProbeHead(HeadConfig(name, "lexical", n_buckets=n_buckets))
    with torch.no_grad():
        head.idf_V.copy_(torch.from_numpy(idf_V))
        head.weight_V.copy_(torch.from_numpy(clf.coef_[0].astype(np.float32)))
        head.bias.fill_(float(clf.intercept_[0]))
    return head.eval()


def blend(name: str, members: dict[str, ProbeHead], weights: Sequence[float]) -> ProbeHead:
    """A blend head over already-fitted members (their weights copied; members keep their own names)."""
    cfgs = tuple(replace(m.cfg, name=role, platt=(1.0, 0.0), threshold=0.5) for role, m in members.items())
    head = ProbeHead(HeadConfig(name, "blend", members=cfgs, weights=tuple(weights)))
    for role, m in members.items():
        head.members[role].load_state_dict(m.state_dict())
    return head.eval()


def fit_platt(raw_N, y, w, steps: int = 100) -> tuple[float, float]:
    """``(a, b)`` of ``sigmoid(a * raw + b)`` by weighted maximum likelihood."""
    raw_N, y_N, w_N = _as_tensor(raw_N), _as_tensor(y), _as_tensor(w)
    ab = torch.tensor([1.0, 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=steps, line_search_fn="strong_wolfe")
    scale = raw_N.std().clamp(min=1e-6)

    def closure():
        opt.zero_grad()
        logit = ab[0] * raw_N / scale + ab[1]
        loss = (
            w_N * torch.nn.functional.binary_cross_entropy_with_logits(logit, y_N, reduction="none")
        ).sum()
        loss = loss / w_N.sum()
        loss.backward()
        return loss

    opt.step(closure)
    a, b = ab.detach().tolist()
    return a / float(scale), b


def balanced_threshold(p_N, y, w) -> float:
    """The probability threshold that maximises weighted TPR - FPR (the balanced operating point)."""
    p, y, w = np.asarray(p_N, np.float64), np.asarray(y), np.asarray(w, np.float64)
    order = np.argsort(-p)
    tp = np.cumsum(w[order] * (y[order] == 1)) / max(w[y == 1].sum(), 1e-12)
    fp = np.cumsum(w[order] * (y[order] == 0)) / max(w[y == 0].sum(), 1e-12)
    k = int(np.argmax(tp - fp))
    nxt = p[order[k + 1]] if k + 1 < len(p) else 0.0
    return float(np.clip((p[order[k]] + nxt) / 2, 1e-4, 1 - 1e-4))


def calibrate(head: ProbeHead, raw_N, y, w, **metrics) -> ProbeHead:
    """``head`` with Platt calibration and the balanced threshold fitted on validation logits ``raw_N``."""
    a, b = fit_platt(raw_N, y, w)
    p_N = torch.sigmoid(a * _as_tensor(raw_N) + b)
    threshold = balanced_threshold(p_N, y, w)
    cfg = replace(
        head.cfg, platt=(a, b), threshold=threshold, metrics={"threshold_rule": "balanced", **metrics}
    )
    out = ProbeHead(cfg)
    out.load_state_dict(head.state_dict())
    return out.eval()
