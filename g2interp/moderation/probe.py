"""Probe heads: small classifiers on the token features of the templated text (see ``features``).

Kinds of head, each giving a raw logit that a Platt calibration maps to a probability:

* ``pooled``: mean over the classified tokens and the last token, per layer, standardised -> linear;
* ``attention``: every classified token (and the last) standardised; ``n_queries`` learned queries each
  score the tokens, a softmax over a text's tokens weights each query's value read-out; their sum is the
  logit (the attention-pooled probe of production monitors: a short harmful span is not averaged away);
* ``lexical``: hashed word 1-2-gram TF-IDF -> linear (see ``lexical``);
* ``blend``: a weighted sum of member heads' raw logits.

A set of heads lives in a folder as ``manifest.json`` (configs, the overall rule, the model they were
trained on, provenance) + ``heads.safetensors``.

The overall rule puts the policies on one scale: the ``overall`` head (the calibrated ``unsafe`` head)
gives the probability that a text is harmful, and each sharing type head only says which harm it is:
``p(type) = p(overall) * r(type) / max r`` over the sharing heads, so the top type carries the overall
probability and the max over the types is exactly the overall head's score.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from g2interp.config import ModelConfig
from g2interp.constants import HOOK_RESID_POST
from g2interp.moderation import lexical
from g2interp.moderation.features import TokenFeatures

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "heads.safetensors"
FORMAT_VERSION = 2
SHIPPED_HEADS_DIR = Path(__file__).parent / "heads"
HEAD_KINDS = ("pooled", "attention", "lexical", "blend")


@dataclass(frozen=True)
class HeadConfig:
    """What one head reads and how it is shaped."""

    name: str
    """The policy it scores (for a blend member: the member's role, e.g. ``attention``)."""
    kind: str = "pooled"
    """One of ``HEAD_KINDS``."""
    layers: tuple[int, ...] = ()
    """Blocks whose ``hook_resid_post`` it reads (pooled / attention heads)."""
    d_model: int = 0
    """Residual width of the model it was trained on (pooled / attention heads)."""
    n_queries: int = 4
    """Learned queries of an attention head."""
    n_buckets: int = 1 << 18
    """Hash buckets of a lexical head."""
    members: tuple[HeadConfig, ...] = ()
    """A blend's member heads."""
    weights: tuple[float, ...] = ()
    """A blend's weight per member raw logit."""
    platt: tuple[float, float] = (1.0, 0.0)
    """Calibration ``p = sigmoid(a * raw + b)``, fitted on validation data."""
    threshold: float = 0.5
    """Default decision threshold on the calibrated probability."""
    metrics: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Recorded measurements (validation AU-PRC, how the threshold was chosen ...), for provenance only."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("a head needs a name")
        if self.kind not in HEAD_KINDS:
            raise ValueError(f"head {self.name!r}: kind must be one of {HEAD_KINDS}, got {self.kind!r}")
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "platt", tuple(float(x) for x in self.platt))
        object.__setattr__(self, "weights", tuple(float(x) for x in self.weights))
        members = tuple(m if isinstance(m, HeadConfig) else HeadConfig(**m) for m in self.members)
        object.__setattr__(self, "members", members)
        if self.kind in ("pooled", "attention"):
            if not self.layers or min(self.layers) < 0 or self.d_model <= 0:
                raise ValueError(f"head {self.name!r}: needs layers >= 0 and d_model > 0")
        if self.kind == "attention" and self.n_queries < 1:
            raise ValueError(f"head {self.name!r}: n_queries must be >= 1")
        if self.kind == "lexical" and self.n_buckets < 2:
            raise ValueError(f"head {self.name!r}: n_buckets must be >= 2")
        if self.kind == "blend":
            if not members or len(self.weights) != len(members):
                raise ValueError(f"head {self.name!r}: a blend needs members and one weight per member")
            if len({m.name for m in members}) != len(members) or any(m.kind == "blend" for m in members):
                raise ValueError(f"head {self.name!r}: blend members need distinct names and no nesting")
        if len(self.platt) != 2 or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"head {self.name!r}: platt needs (a, b) and threshold must lie in (0, 1)")

    @property
    def d_in(self) -> int:
        per_token = len(self.layers) * self.d_model
        return 2 * per_token if self.kind == "pooled" else per_token

    @property
    def all_layers(self) -> tuple[int, ...]:
        return tuple(sorted({x for c in (self, *self.members) for x in c.layers}))

    @property
    def reads_text(self) -> bool:
        return self.kind == "lexical" or any(m.kind == "lexical" for m in self.members)


def segment_softmax(scores_TH: Tensor, seg_T: Tensor, n: int) -> Tensor:
    """Softmax over the rows of each segment, per column."""
    H = scores_TH.shape[1]
    seg_TH = seg_T[:, None].expand(-1, H)
    top_NH = torch.full((n, H), -torch.inf).scatter_reduce(0, seg_TH, scores_TH.detach(), "amax")
    e_TH = (scores_TH - top_NH[seg_T]).exp()
    return e_TH / torch.zeros(n, H).index_add_(0, seg_T, e_TH)[seg_T]


class ProbeHead(nn.Module):
    """One head: raw logit from token features (and texts), then Platt-calibrated probability."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.kind in ("pooled", "attention"):
            F = cfg.d_in
            self.register_buffer("mean_F", torch.zeros(F))
            self.register_buffer("scale_F", torch.ones(F))
        if cfg.kind == "pooled":
            self.weight_F = nn.Parameter(torch.zeros(F))
        elif cfg.kind == "attention":
            self.query_FH = nn.Parameter(torch.zeros(F, cfg.n_queries))
            self.value_FH = nn.Parameter(torch.zeros(F, cfg.n_queries))
        elif cfg.kind == "lexical":
            self.register_buffer("idf_V", torch.zeros(cfg.n_buckets))
            self.weight_V = nn.Parameter(torch.zeros(cfg.n_buckets))
        else:
            self.members = nn.ModuleDict({m.name: ProbeHead(m) for m in cfg.members})
        if cfg.kind != "blend":
            self.bias = nn.Parameter(torch.zeros(()))

    def raw(self, feats: TokenFeatures) -> Tensor:
        """Uncalibrated logit [N]."""
        kind = self.cfg.kind
        if kind == "pooled":
            z_NF = (feats.pooled(self.cfg.layers) - self.mean_F) / self.scale_F
            return z_NF @ self.weight_F + self.bias
        if kind == "attention":
            x_TF, seg_T = feats.tokens(self.cfg.layers)
            return self.attend(x_TF, seg_T, len(feats))
        if kind == "lexical":
            if feats.texts is None:
                raise ValueError(f"head {self.cfg.name!r} is lexical: the features must carry their texts")
            x = lexical.tfidf(feats.texts, self.idf_V.numpy())
            w_V = self.weight_V.detach().numpy()
            return torch.from_numpy(np.asarray(x @ w_V, dtype=np.float32)) + self.bias
        return sum(
            w * self.members[m.name].raw(feats)
            for m, w in zip(self.cfg.members, self.cfg.weights, strict=True)
        )

    def attend(self, x_TF: Tensor, seg_T: Tensor, n: int) -> Tensor:
        """Attention read-out of tokens (standardised by ``mean_F``/``scale_F``): sum over queries of
        softmax-weighted values."""
        H = self.cfg.n_queries
        # standardisation folded into the weights: one matmul on the raw tokens, no standardised copy
        W_FK = torch.cat([self.query_FH, self.value_FH], 1) / self.scale_F[:, None]
        qv_TK = x_TF @ W_FK - self.mean_F @ W_FK
        attn_TH = segment_softmax(qv_TK[:, :H], seg_T, n)
        out_NH = torch.zeros(n, H).index_add_(0, seg_T, attn_TH * qv_TK[:, H:])
        return out_NH.sum(1) + self.bias

    def forward(self, feats: TokenFeatures) -> Tensor:
        a, b = self.cfg.platt
        return torch.sigmoid(a * self.raw(feats) + b)


class HeadSet:
    """Heads sharing one feature extraction (the union of their layers), with the overall rule."""

    def __init__(
        self,
        heads: Mapping[str, ProbeHead],
        model_info: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
        *,
        overall: str | None = None,
        shares: Sequence[str] = (),
    ):
        if not heads:
            raise ValueError("a HeadSet needs at least one head")
        self.heads = dict(heads)
        self.model_info = dict(model_info)
        self.provenance = dict(provenance or {})
        if overall is not None and overall not in self.heads:
            raise ValueError(f"overall head {overall!r} is not among the heads {sorted(self.heads)}")
        unknown = sorted(set(shares) - set(self.heads))
        if unknown or (shares and overall is None):
            raise ValueError(f"sharing heads {unknown or list(shares)} need an overall head and must exist")
        self.overall, self.shares = overall, tuple(shares)
        self.layers = tuple(sorted({x for h in self.heads.values() for x in h.cfg.all_layers}))
        self.reads_text = any(h.cfg.reads_text for h in self.heads.values())

    @staticmethod
    def model_info_of(cfg: ModelConfig) -> dict[str, Any]:
        return {
            "architecture": cfg.architecture,
            "n_layers": cfg.n_layers,
            "d_model": cfg.d_model,
            "vocab_size": cfg.vocab_size,
        }

    def check_model(self, cfg: ModelConfig) -> None:
        """Raise unless the heads were trained on a model of this shape."""
        have = self.model_info_of(cfg)
        diff = {k: (v, have.get(k)) for k, v in self.model_info.items() if have.get(k) != v}
        if diff:
            raise ValueError(
                f"these probe heads were trained on a different model ({diff} as trained vs given); "
                "use the generative scorer (scorer='generative') or train heads for this model"
            )

    def with_head(self, head: ProbeHead, *, replace: bool = False) -> HeadSet:
        """A new set with ``head`` added (a custom policy; it does not share the overall scale)."""
        name = head.cfg.name
        if name in self.heads and not replace:
            raise ValueError(f"a head named {name!r} exists already; pass replace=True to overwrite it")
        if name in self.shares or name == self.overall:
            raise ValueError(f"{name!r} is a built-in head of the overall rule and cannot be replaced")
        heads = {**self.heads, name: head}
        return HeadSet(heads, self.model_info, self.provenance, overall=self.overall, shares=self.shares)

    def save(self, folder: str | Path) -> None:
        """Write ``manifest.json`` and ``heads.safetensors`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{name}.{k}": v.detach().cpu().contiguous()
            for name, h in self.heads.items()
            for k, v in h.state_dict().items()
        }
        manifest = {
            "format": FORMAT_VERSION,
            "hook": HOOK_RESID_POST,
            "model": self.model_info,
            "overall": {"head": self.overall, "shares": list(self.shares)},
            "provenance": self.provenance,
            "heads": {name: asdict(h.cfg) for name, h in self.heads.items()},
        }
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, folder / WEIGHTS_FILE)
        tmp = folder / (MANIFEST_FILE + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, folder / MANIFEST_FILE)

    @classmethod
    def load(cls, folder: str | Path = SHIPPED_HEADS_DIR) -> HeadSet:
        """Load strictly: every tensor of every head present, shaped as its config says, nothing extra."""
        folder = Path(folder)
        path = folder / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds no {MANIFEST_FILE}: not a probe-head folder")
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format {manifest.get('format')!r}, this version reads {FORMAT_VERSION}"
            )
        if manifest.get("hook") != HOOK_RESID_POST:
            raise ValueError(
                f"{path}: heads read {manifest.get('hook')!r}; only {HOOK_RESID_POST!r} is supported"
            )
        tensors = load_file(str(folder / WEIGHTS_FILE))
        heads: dict[str, ProbeHead] = {}
        for name, raw in manifest["heads"].items():
            head = ProbeHead(HeadConfig(**raw))
            prefix = f"{name}."
            state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            expected = head.state_dict()
            missing = sorted(set(expected) - set(state))
            if missing:
                raise ValueError(f"{folder / WEIGHTS_FILE}: head {name!r} lacks {missing}")
            for k, v in state.items():
                if k not in expected or expected[k].shape != v.shape:
                    want = None if k not in expected else tuple(expected[k].shape)
                    raise ValueError(
                        f"{folder / WEIGHTS_FILE}: {prefix}{k} has shape {tuple(v.shape)}, expected {want}"
                    )
            head.load_state_dict(state, strict=True)
            heads[name] = head.eval()
        stray = sorted(k for k in tensors if k.split(".", 1)[0] not in heads)
        if stray:
            raise ValueError(f"{folder / WEIGHTS_FILE}: tensors of no head in the manifest: {stray[:5]}")
        rule = manifest.get("overall") or {}
        return cls(
            heads,
            manifest["model"],
            manifest.get("provenance"),
            overall=rule.get("head"),
            shares=rule.get("shares", ()),
        )

    def predict(self, feats: TokenFeatures, names: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Probability [N] per head (all, or ``names``), sharing heads on the overall scale."""
        names = list(self.heads) if names is None else list(names)
        need = set(names)
        if need & set(self.shares):
            need |= {self.overall, *self.shares}
        with torch.no_grad():
            probs = {name: self.heads[name](feats) for name in self.heads if name in need}
            if need & set(self.shares):
                r_SN = torch.stack([probs[s] for s in self.shares])
                share_SN = r_SN / r_SN.max(0).values.clamp(min=1e-12)
                for s, share_N in zip(self.shares, share_SN, strict=True):
                    probs[s] = probs[self.overall] * share_N
        return {name: probs[name] for name in names}
