"""Probe heads: small classifiers on pooled residual streams of the templated text.

A head reads ``blocks.{layer}.hook_resid_post`` pooled over the classified text (see ``runner.POOLINGS``)
for one or more layers, standardises it, applies a logistic regression or a one-hidden-layer MLP, and maps
the logit through a Platt calibration fitted on held-out data. A set of heads lives in a folder as
``manifest.json`` (configs, the model they were trained on, provenance) + ``heads.safetensors``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from g2interp.config import ModelConfig
from g2interp.constants import HOOK_RESID_POST
from g2interp.moderation.runner import POOLINGS, PrefixRunner, length_buckets, pool_features
from g2interp.moderation.template import EncodedText

logger = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "heads.safetensors"
FORMAT_VERSION = 1
SHIPPED_HEADS_DIR = Path(__file__).parent / "heads"


@dataclass(frozen=True)
class HeadConfig:
    """What one head reads and how it is shaped."""

    name: str
    """The policy (harm type) it scores."""
    layers: tuple[int, ...]
    """Blocks whose ``hook_resid_post`` it reads (features concatenated in this order)."""
    poolings: tuple[str, ...]
    """Poolings it reads, each over every layer (``mean``, ``max``, ``last``)."""
    d_model: int
    """Residual width of the model it was trained on."""
    hidden: int = 0
    """Hidden units of the MLP; 0 is a logistic regression."""
    platt: tuple[float, float] = (1.0, 0.0)
    """Calibration ``p = sigmoid(a * logit + b)`` fitted on validation data."""
    threshold: float = 0.5
    """Default decision threshold on the calibrated probability."""
    metrics: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """Recorded measurements (validation AU-PRC etc.), for provenance only."""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a head needs a name")
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        object.__setattr__(self, "poolings", tuple(self.poolings))
        object.__setattr__(self, "platt", tuple(float(x) for x in self.platt))
        if not self.layers or min(self.layers) < 0:
            raise ValueError(f"head {self.name!r}: layers must be non-empty and >= 0, got {self.layers}")
        bad = [p for p in self.poolings if p not in POOLINGS]
        if not self.poolings or bad:
            raise ValueError(
                f"head {self.name!r}: poolings must be a non-empty subset of {POOLINGS}, got {self.poolings}"
            )
        if self.hidden < 0 or self.d_model <= 0:
            raise ValueError(f"head {self.name!r}: hidden must be >= 0 and d_model > 0")
        if len(self.platt) != 2 or not 0.0 < self.threshold < 1.0:
            raise ValueError(f"head {self.name!r}: platt needs (a, b) and threshold must lie in (0, 1)")

    @property
    def d_in(self) -> int:
        return len(self.layers) * len(self.poolings) * self.d_model


class ProbeHead(nn.Module):
    """Standardise -> linear (or MLP) -> Platt-calibrated probability."""

    def __init__(self, cfg: HeadConfig):
        super().__init__()
        self.cfg = cfg
        F = cfg.d_in
        self.register_buffer("mean_F", torch.zeros(F))
        self.register_buffer("scale_F", torch.ones(F))
        if cfg.hidden:
            self.net = nn.Sequential(nn.Linear(F, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, 1))
        else:
            self.net = nn.Sequential(nn.Linear(F, 1))

    def select(self, feats_NPLM: Tensor, layers: Sequence[int], poolings: Sequence[str]) -> Tensor:
        """This head's inputs [N, F] from a feature block pooled with ``poolings`` x ``layers``."""
        pi = [list(poolings).index(p) for p in self.cfg.poolings]
        li = [list(layers).index(x) for x in self.cfg.layers]
        return feats_NPLM[:, pi][:, :, li].reshape(feats_NPLM.shape[0], -1)

    def logit(self, x_NF: Tensor) -> Tensor:
        z_NF = (x_NF.float() - self.mean_F) / self.scale_F
        a, b = self.cfg.platt
        return a * self.net(z_NF)[:, 0] + b

    def forward(self, x_NF: Tensor) -> Tensor:
        return torch.sigmoid(self.logit(x_NF))


class HeadSet:
    """Heads sharing one feature extraction (the union of their layers and poolings)."""

    def __init__(
        self,
        heads: Mapping[str, ProbeHead],
        model_info: Mapping[str, Any],
        provenance: Mapping[str, Any] | None = None,
    ):
        if not heads:
            raise ValueError("a HeadSet needs at least one head")
        self.heads = dict(heads)
        self.model_info = dict(model_info)
        self.provenance = dict(provenance or {})
        self.layers = tuple(sorted({x for h in self.heads.values() for x in h.cfg.layers}))
        self.poolings = tuple(p for p in POOLINGS if any(p in h.cfg.poolings for h in self.heads.values()))

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

    def save(self, folder: str | Path) -> None:
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
            "provenance": self.provenance,
            "heads": {name: asdict(h.cfg) for name, h in self.heads.items()},
        }
        save_file(tensors, str(folder / WEIGHTS_FILE))
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")

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
        return cls(heads, manifest["model"], manifest.get("provenance"))

    def predict(
        self, feats_NPLM: Tensor, layers: Sequence[int], poolings: Sequence[str]
    ) -> dict[str, Tensor]:
        """Calibrated probability [N] per head from features pooled with ``poolings`` x ``layers``."""
        with torch.no_grad():
            return {name: h(h.select(feats_NPLM, layers, poolings)).cpu() for name, h in self.heads.items()}


def extract_features(
    runner: PrefixRunner,
    encoded: Sequence[EncodedText],
    layers: Sequence[int],
    poolings: Sequence[str],
    *,
    batch_size: int = 8,
    max_batch_tokens: int = 4096,
) -> Tensor:
    """[N, n_pool, n_layer, M] fp32 features, one text-part forward per text, stopping after the deepest layer."""
    hooks = [HOOK_RESID_POST.format(layer=x) for x in layers]
    n_layers = runner.model.cfg.n_layers
    if max(layers) >= n_layers:
        raise ValueError(f"layer {max(layers)} does not exist: the model has {n_layers} blocks")
    out = torch.empty(len(encoded), len(poolings), len(layers), runner.model.cfg.d_model)
    for idx in length_buckets(encoded, batch_size, max_batch_tokens):
        batch = [encoded[i] for i in idx]
        run = runner.run(batch, hooks=hooks, stop_at_layer=max(layers) + 1)
        out[idx] = pool_features(run, batch, layers, poolings).cpu()
    return out
