"""The Moderator: per-policy harm probabilities for prompts and responses, verdicts, guarded generation.

Two scorers share one prefix forward per text:

* **probe** (the embedded default, ``Moderator.load()``): small heads on the residual stream of the
  templated text; one forward (stopping after the deepest layer a head reads) scores every policy that
  has a head;
* **generative** (ShieldGemma's method, ``Moderator.from_checkpoint(path)``): P(Yes) over the 'Yes'/'No'
  logits after each policy's question, every policy continuing the same cached prefix.

With the probe scorer, a custom ``Policy`` (no head can know its wording, even under a built-in name) is
scored generatively on the same model and the same prefix forward.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from g2interp.constants import HOOK_RESID_POST
from g2interp.model.gemma import HookedGemma
from g2interp.moderation.config import ModeratorConfig
from g2interp.moderation.features import TokenFeatures
from g2interp.moderation.generative import gap_free, score_suffixes
from g2interp.moderation.policies import BUILTIN_POLICIES, Policy, fitted_policy, resolve_policies
from g2interp.moderation.policy_fit import PolicyFit, fit_policy
from g2interp.moderation.probe import SHIPPED_HEADS_DIR, HeadSet, ProbeHead
from g2interp.moderation.runner import PrefixRunner, length_buckets
from g2interp.moderation.sentences import sentences
from g2interp.moderation.template import EncodedText, TemplateEncoder

logger = logging.getLogger(__name__)

Thresholds = float | Mapping[str, float] | None


class Verdict(NamedTuple):
    """The judgement on one text."""

    allowed: bool
    """True when no policy's probability reached its threshold."""
    scores: dict[str, float]
    """Probability of violating each policy, by policy name."""
    tripped: tuple[str, ...]
    """Policies whose probability reached their threshold (empty when allowed)."""
    thresholds: dict[str, float]
    """The threshold applied per policy."""
    truncated: bool
    """Whether the text was cut to ``max_text_tokens`` before scoring."""

    @property
    def blocked(self) -> bool:
        return not self.allowed


def _as_texts(texts: str | Sequence[str], what: str) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, Sequence):
        raise TypeError(f"{what} must be a str or a sequence of str, got {type(texts).__name__}")
    out = list(texts)
    if not out:
        raise ValueError(f"no {what} given")
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is a {type(t).__name__}; texts must be str")
    return out


class Moderator:
    """Scores texts against a set of policies with one prefix forward per text."""

    def __init__(
        self,
        model: HookedGemma,
        policies: Sequence[Policy | str] | None = None,
        *,
        scorer: Literal["auto", "probe", "generative"] = "auto",
        heads: HeadSet | str | os.PathLike | None = None,
        config: ModeratorConfig | None = None,
    ):
        if not isinstance(model, HookedGemma):
            raise TypeError(f"model must be a HookedGemma (g2interp.load_model), got {type(model).__name__}")
        if model.tokenizer is None:
            raise ValueError(
                "the model has no tokenizer; moderation needs its tokenizer.json / GGUF vocabulary"
            )
        if scorer not in ("auto", "probe", "generative"):
            raise ValueError(f"scorer must be 'auto', 'probe' or 'generative', got {scorer!r}")
        self.model = model
        self.config = config or ModeratorConfig()
        self.encoder = TemplateEncoder(model.tokenizer, self.config.max_text_tokens, self.config.overflow)
        self.runner = PrefixRunner(model)
        self.heads = self._resolve_heads(scorer, heads)
        if not isinstance(policies, (str, Policy)) and policies is not None:
            policies = [self._fitted(p) if isinstance(p, str) else p for p in policies]
        elif isinstance(policies, str):
            policies = [self._fitted(policies)]
        self.policies = resolve_policies(policies)
        self._split_policies()

    def _fitted(self, name: str) -> Policy | str:
        """A policy name with a head fitted from examples (not a built-in) becomes that head's policy."""
        if self.heads is not None and name in self.heads.heads and name not in BUILTIN_POLICIES:
            return fitted_policy(name)
        return name

    def _split_policies(self) -> None:
        has_head = set(self.heads.heads) if self.heads is not None else set()
        # A head knows one wording: it scores the built-in policy of its name, never a redefinition.
        self.probe_policies = tuple(
            p
            for p in self.policies
            if p.name in has_head and BUILTIN_POLICIES.get(p.name, fitted_policy(p.name)) == p
        )
        self.generative_policies = tuple(p for p in self.policies if p not in self.probe_policies)
        if self.heads is not None and self.generative_policies:
            logger.info(
                "no probe head for %s: scored generatively (P(Yes)) on the same model",
                [p.name for p in self.generative_policies],
            )

    def add_head(self, head: ProbeHead, *, replace: bool = False) -> None:
        """Add a head for a custom policy (see ``fit_policy``); its policy joins ``self.policies``."""
        if self.heads is None:
            raise ValueError("this moderator scores generatively; fitted heads need the probe scorer")
        self.heads = self.heads.with_head(head, replace=replace)
        name = head.cfg.name
        self.policies = (*(p for p in self.policies if p.name != name), fitted_policy(name))
        self._split_policies()

    def fit_policy(self, name: str, texts: Sequence[str], labels: Sequence, **kwargs) -> PolicyFit:
        """Train and calibrate a probe head for a new policy from labelled examples (1 = violates).

        A few hundred examples fit in well under a minute on a CPU; ``prompts=`` makes ``texts`` responses.
        The head joins this moderator (and ``save_heads`` writes it beside the others).
        """
        return fit_policy(self, name, texts, labels, **kwargs)

    def save_heads(self, folder: str | os.PathLike) -> None:
        """Write every head (shipped and fitted) as a heads folder that ``Moderator(..., heads=folder)`` reads."""
        if self.heads is None:
            raise ValueError("this moderator has no probe heads to save")
        self.heads.save(folder)

    def token_features(self, encoded: Sequence[EncodedText], layers: Sequence[int]) -> TokenFeatures:
        """Token features of encoded texts at ``layers`` (one text-part forward each, stopped early)."""
        hooks = [HOOK_RESID_POST.format(layer=x) for x in layers]
        if max(layers) >= self.model.cfg.n_layers:
            raise ValueError(
                f"layer {max(layers)} does not exist: the model has {self.model.cfg.n_layers} blocks"
            )
        parts, order = [], []
        for idx in length_buckets(encoded, self.config.batch_size, self.config.max_batch_tokens):
            batch = [encoded[i] for i in idx]
            run = self.runner.run(batch, hooks=hooks, stop_at_layer=max(layers) + 1)
            parts.append(TokenFeatures.from_run(run, batch, layers, [e.text for e in batch]))
            order.extend(idx)
        feats = TokenFeatures.cat(parts)
        return feats.subset(torch.argsort(torch.tensor(order)))

    def _resolve_heads(self, scorer: str, heads) -> HeadSet | None:
        if scorer == "generative":
            return None
        if heads is None:
            heads = SHIPPED_HEADS_DIR
        if not isinstance(heads, HeadSet):
            heads = HeadSet.load(Path(heads))
        if scorer == "auto":
            try:
                heads.check_model(self.model.cfg)
            except ValueError:
                return None
            return heads
        heads.check_model(self.model.cfg)
        return heads

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        policies: Sequence[Policy | str] | None = None,
        *,
        config: ModeratorConfig | None = None,
        device: str | torch.device | None = None,
        heads: HeadSet | str | os.PathLike | None = None,
    ) -> Moderator:
        """The embedded Gemma 3 270M with the shipped probe heads (or a heads folder of yours), fp32."""
        from g2interp.loading import load_model

        model = load_model(device=device, dtype=torch.float32)
        return cls(model, policies, scorer="probe", heads=heads, config=config)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        policies: Sequence[Policy | str] | None = None,
        *,
        config: ModeratorConfig | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> Moderator:
        """A local ShieldGemma (or any Gemma 2 / 3) folder or .gguf, scored generatively."""
        from g2interp.loading import load_model

        try:
            model = load_model(path, device=device, dtype=dtype)
        except ValueError as exc:
            raise ValueError(
                f"cannot moderate with {path}: not a Gemma 2 / Gemma 3 checkpoint ({exc})"
            ) from exc
        return cls(model, policies, scorer="generative", config=config)

    # ------------------------------------------------------------------ scoring
    @property
    def policy_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.policies)

    @property
    def default_thresholds(self) -> dict[str, float]:
        heads = self.heads.heads if self.heads is not None else {}
        return {
            p.name: heads[p.name].cfg.threshold if p.name in heads else self.config.default_threshold
            for p in self.policies
        }

    def score_prompts(self, texts: str | Sequence[str]) -> list[dict[str, float]]:
        """Per text, policy name -> probability that the prompt violates it."""
        texts = _as_texts(texts, "texts")
        return self._as_dicts(self._score_views(texts, [None] * len(texts))[0])

    def score_responses(
        self, prompts: str | Sequence[str], responses: str | Sequence[str]
    ) -> list[dict[str, float]]:
        """Per (prompt, response), policy name -> probability that the response violates it."""
        prompts, responses = _as_texts(prompts, "prompts"), _as_texts(responses, "responses")
        if len(prompts) != len(responses):
            raise ValueError(
                f"{len(prompts)} prompts but {len(responses)} responses: pass one prompt per response"
            )
        return self._as_dicts(self._score_views(responses, prompts)[0])

    def _score_views(self, texts: Sequence[str], prompts: Sequence[str | None]) -> tuple[Tensor, list[bool]]:
        """[N, n_policies] probabilities of the texts (responses to ``prompts`` where not None): the maximum
        over the whole text and its sentences (``config.max_sentences``); and whether each whole text was
        truncated."""
        cfg = self.config
        encoded, owner, is_part, truncated = [], [], [], []
        for i, (text, prompt) in enumerate(zip(texts, prompts, strict=True)):
            views = [text]
            if cfg.max_sentences:
                views += sentences(text, cfg.max_sentences)
            for k, view in enumerate(views):
                enc = (
                    self.encoder.encode_prompt(view)
                    if prompt is None
                    else self.encoder.encode_response(prompt, view)
                )
                encoded.append(enc)
                owner.append(i)
                is_part.append(k > 0)
            truncated.append(encoded[-len(views)].truncated)
        probs_VP = self.score_encoded(encoded)
        if cfg.sentence_discount and any(is_part):
            part_V = torch.tensor(is_part)
            logits = torch.logit(probs_VP[part_V].double(), eps=1e-7) - cfg.sentence_discount
            probs_VP[part_V] = torch.sigmoid(logits).to(probs_VP.dtype)
        owner_V = torch.tensor(owner)[:, None].expand_as(probs_VP)
        probs_NP = torch.zeros(len(texts), probs_VP.shape[1]).scatter_reduce(0, owner_V, probs_VP, "amax")
        return probs_NP, truncated

    def _as_dicts(self, probs_NP: Tensor) -> list[dict[str, float]]:
        names = self.policy_names
        return [dict(zip(names, row, strict=True)) for row in probs_NP.tolist()]

    def score_encoded(self, encoded: Sequence[EncodedText]) -> Tensor:
        """[N, n_policies] probabilities for already-encoded texts, columns in ``self.policies`` order."""
        cfg = self.config
        out = torch.empty(len(encoded), len(self.policies), dtype=torch.float32)
        probe_cols = [self.policies.index(p) for p in self.probe_policies]
        gen_cols = [self.policies.index(p) for p in self.generative_policies]
        hooks: list[str] = []
        stop = None
        if self.probe_policies:
            hooks = [HOOK_RESID_POST.format(layer=x) for x in self.heads.layers]
            stop = None if self.generative_policies else max(self.heads.layers) + 1
        for idx in length_buckets(encoded, cfg.batch_size, cfg.max_batch_tokens):
            kind = encoded[idx[0]].is_response
            suffixes = [self.encoder.suffix(p, kind) for p in self.generative_policies]
            longest = max((len(s) for s in suffixes), default=0)
            groups = [idx]
            if suffixes and not gap_free(self.model, [encoded[i] for i in idx], longest):
                groups = [[i] for i in idx]  # too long to pad exactly under a sliding window: one at a time
            for group in groups:
                batch = [encoded[i] for i in group]
                run = self.runner.run(batch, hooks=hooks, stop_at_layer=stop, extra_len=longest)
                if self.probe_policies:
                    texts = [e.text for e in batch] if self.heads.reads_text else None
                    feats = TokenFeatures.from_run(run, batch, self.heads.layers, texts)
                    preds = self.heads.predict(feats, [p.name for p in self.probe_policies])
                    for col, p in zip(probe_cols, self.probe_policies, strict=True):
                        out[group, col] = preds[p.name].float()
                if suffixes:
                    probs = score_suffixes(
                        self.runner, run, suffixes, self.encoder.yes_id, self.encoder.no_id
                    )
                    for k, col in enumerate(gen_cols):
                        out[group, col] = probs[:, k]
        return out

    # ------------------------------------------------------------------ verdicts
    def resolve_thresholds(self, thresholds: Thresholds) -> dict[str, float]:
        """Per-policy thresholds: the defaults, one float for all, or a mapping overriding some names."""
        out = self.default_thresholds
        if thresholds is None:
            return out
        if isinstance(thresholds, (int, float)) and not isinstance(thresholds, bool):
            out = dict.fromkeys(out, float(thresholds))
        elif isinstance(thresholds, Mapping):
            unknown = sorted(set(thresholds) - set(out))
            if unknown:
                raise ValueError(f"thresholds for unknown policies {unknown}; policies are {list(out)}")
            out.update({k: float(v) for k, v in thresholds.items()})
        else:
            raise TypeError(
                f"thresholds must be a float or a mapping of policy name to float, got {type(thresholds).__name__}"
            )
        bad = {k: v for k, v in out.items() if not 0.0 <= v <= 1.0}
        if bad:
            raise ValueError(f"thresholds must lie in [0, 1]; got {bad}")
        return out

    def _verdict(self, scores: dict[str, float], thresholds: dict[str, float], truncated: bool) -> Verdict:
        tripped = tuple(name for name, s in scores.items() if s >= thresholds[name])
        return Verdict(not tripped, scores, tripped, thresholds, truncated)

    def check_prompt(self, text: str, thresholds: Thresholds = None) -> Verdict:
        """Pre-filter: is this user prompt allowed?"""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        limits = self.resolve_thresholds(thresholds)
        probs, truncated = self._score_views([text], [None])
        return self._verdict(self._as_dicts(probs)[0], limits, truncated[0])

    def check_response(self, prompt: str, response: str, thresholds: Thresholds = None) -> Verdict:
        """Post-filter: may this response to ``prompt`` be shown?"""
        for what, value in (("prompt", prompt), ("response", response)):
            if not isinstance(value, str):
                raise TypeError(f"{what} must be a str, got {type(value).__name__}")
        limits = self.resolve_thresholds(thresholds)
        probs, truncated = self._score_views([response], [prompt])
        return self._verdict(self._as_dicts(probs)[0], limits, truncated[0])
