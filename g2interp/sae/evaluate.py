"""SAE evaluations: reconstruction and sparsity on activation batches, and the LM loss when spliced in.

Both return named results that write themselves as JSON beside the SAE (``eval.json``,
``delta_lm_loss.json``). :func:`evaluate_on_source` runs both on the held-out contexts of an
activation source (a store or on-the-fly capture), with the source's rules for which positions count.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from g2interp.files import atomic_write_text
from g2interp.sae.constants import DELTA_LOSS_RESULTS_FILE, EVAL_RESULTS_FILE
from g2interp.sae.sae import JumpReLUSAE
from g2interp.sae.splice import HookedModel, splice

if TYPE_CHECKING:
    from g2interp.activations.source import ActivationSource


class _Result:
    """A result that writes itself as strict JSON (NaN as null) beside the SAE, and reads itself back."""

    FILE = ""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.repr}  # type: ignore[arg-type]

    def save(self, folder: str | Path) -> Path:
        """Write the result's file into ``folder`` (atomically)."""
        path = Path(folder) / self.FILE
        atomic_write_text(path, json.dumps(_json_safe(self.to_dict()), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path):
        """The result a :meth:`save` wrote (null read back as NaN)."""
        data = json.loads((Path(folder) / cls.FILE).read_text())
        return cls(
            **{
                k: float("nan") if v is None else tuple(v) if isinstance(v, list) else v
                for k, v in data.items()
            }
        )


@dataclass(frozen=True)
class SAEEvalResult(_Result):
    """Reconstruction and sparsity of an SAE on a set of activations."""

    FILE = EVAL_RESULTS_FILE

    n_tokens: int
    """Activation vectors evaluated."""
    l0: float
    """Active latents per token, averaged."""
    mse: float
    """Mean squared error per element, ``mean((x - x̂)²)`` over tokens and features."""
    fvu: float
    """Fraction of variance unexplained: ``Σ‖x - x̂‖² / Σ‖x - x̄‖²`` (x̄ the mean over all tokens)."""
    variance_explained: float
    """``1 - fvu``."""
    dead_fraction: float
    """Latents that fired on none of the tokens."""
    dense_fraction: float
    """Latents firing on more than ``dense_threshold`` of the tokens."""
    dense_threshold: float
    """Firing frequency above which a latent counts as dense."""
    density_hist_edges: tuple[float, ...]
    """log10 firing-frequency bin edges of the histogram (latents that fired at least once)."""
    density_hist_counts: tuple[int, ...]
    """Latents per bin."""
    feature_density: Tensor | None = dataclasses.field(default=None, repr=False, compare=False)
    """Firing frequency per latent [d_sae] (not written to JSON, None when read back)."""
    split: str = ""
    """Which split of the source the activations come from (``eval``: held out)."""
    n_contexts: int = 0
    """Contexts the tokens come from."""
    source_fingerprint: str = ""
    """Fingerprint of the activation source (model, corpus, packing)."""


@dataclass(frozen=True)
class DeltaLossResult(_Result):
    """Next-token cross-entropy with the SAE's reconstruction spliced in at its hook."""

    FILE = DELTA_LOSS_RESULTS_FILE

    hook_name: str
    """Where the activation was replaced."""
    n_tokens: int
    """Predicted tokens the losses average over."""
    ce_clean: float
    """Cross-entropy of the unmodified model."""
    ce_sae: float
    """Cross-entropy with the activation replaced by the SAE's reconstruction."""
    ce_zero: float
    """Cross-entropy with the activation replaced by zeros."""
    delta_loss: float
    """``ce_sae - ce_clean``."""
    fraction_recovered: float
    """``(ce_zero - ce_sae) / (ce_zero - ce_clean)``: 1 when splicing costs nothing, 0 when it is as bad
    as zero ablation (NaN when zero ablation costs nothing)."""
    n_contexts: int = 0
    """Contexts scored."""
    split: str = ""
    """Which split of the source they come from."""


@torch.no_grad()
def evaluate_sae(
    sae: JumpReLUSAE,
    batches: Iterable[Float[Tensor, "... d_in"] | tuple[Tensor, Tensor]],
    *,
    max_batches: int | None = None,
    dense_threshold: float = 0.1,
    hist_bins: int = 40,
    hist_min_log10: float = -8.0,
) -> SAEEvalResult:
    """L0, MSE, FVU, dead and dense latents, and the firing-density histogram over raw activation batches.

    A transcoder's batches are ``(inputs, targets)`` pairs (its input and output hooks' activations):
    MSE and FVU are then those of the targets, e.g. of the MLP's output.

    Sums are accumulated in float64 in one pass, so the result does not depend on how the tokens are batched
    beyond float rounding of the SAE itself.
    """
    if not 0 < dense_threshold <= 1:
        raise ValueError(f"dense_threshold must lie in (0, 1], got {dense_threshold}")
    d_in, d_sae, d_out = sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.d_out
    n = 0
    sum_y_O = torch.zeros(d_out, dtype=torch.float64)
    sum_sq_y = 0.0
    sum_sq_err = 0.0
    fired_F = torch.zeros(d_sae, dtype=torch.int64)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x, y = batch if isinstance(batch, tuple | list) else (batch, None)
        if sae.cfg.is_transcoder and y is None:
            raise ValueError("a transcoder is evaluated on (inputs, targets) pairs; got inputs only")
        x_ND = x.reshape(-1, d_in).to(sae.W_enc.device)
        y_NO = x_ND if y is None else y.reshape(-1, d_out).to(sae.W_enc.device)
        acts_NF = sae.encode(x_ND)
        err_NO = (sae.output(acts_NF, x_ND) - y_NO.to(acts_NF.dtype)).double()
        y64_NO = y_NO.double()
        n += x_ND.shape[0]
        sum_y_O += y64_NO.sum(0).cpu()
        sum_sq_y += float((y64_NO * y64_NO).sum())
        sum_sq_err += float((err_NO * err_NO).sum())
        fired_F += (acts_NF != 0).sum(0).cpu()
    if n == 0:
        raise ValueError("no activations to evaluate: the batches were empty")
    total_var = sum_sq_y - float(sum_y_O @ sum_y_O) / n
    fvu = sum_sq_err / total_var if total_var > 0 else float("nan")
    density_F = fired_F.double() / n
    alive = density_F[density_F > 0]
    edges = torch.linspace(hist_min_log10, 0.0, hist_bins + 1, dtype=torch.float64)
    counts = torch.histc(alive.log10().clamp(min=hist_min_log10), bins=hist_bins, min=hist_min_log10, max=0.0)
    return SAEEvalResult(
        n_tokens=n,
        l0=float(fired_F.sum()) / n,
        mse=sum_sq_err / (n * d_out),
        fvu=fvu,
        variance_explained=1.0 - fvu,
        dead_fraction=float((fired_F == 0).sum()) / d_sae,
        dense_fraction=float((density_F > dense_threshold).sum()) / d_sae,
        dense_threshold=dense_threshold,
        density_hist_edges=tuple(float(e) for e in edges),
        density_hist_counts=tuple(int(c) for c in counts),
        feature_density=density_F,
    )


class HookableLM(HookedModel, Protocol):
    """What :func:`delta_lm_loss` needs of a model (HookedGemma and TransformerLens models have it)."""

    def __call__(self, tokens: Tensor, attention_mask: Tensor | None = None) -> Tensor: ...


@torch.no_grad()
def delta_lm_loss(
    model: HookableLM,
    sae: JumpReLUSAE,
    tokens: Int[Tensor, "batch pos"],
    hook_name: str | None = None,
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    splice_bos: bool = False,
    bos_token_id: int | None = None,
    splice_mask: Bool[Tensor, "batch pos"] | None = None,
    batch_size: int | None = None,
    ce_clean: float | None = None,
) -> DeltaLossResult:
    """Cross-entropy clean, with the SAE reconstruction spliced in, and with the activation zero-ablated.

    The loss averages over next-token predictions whose input and target are both real tokens. Unless
    ``splice_bos``, positions holding the BOS token keep their clean activation in both modified runs
    (their activations are outliers SAEs are not trained on; Gemma Scope excludes them);
    ``splice_mask`` instead names the positions to splice (those an SAE was trained on). ``batch_size`` rows go through the model at a time (all by default; logits are ``rows x pos x vocab``
    floats, so keep it small for large vocabularies). ``ce_clean`` from :func:`next_token_loss` on the
    same tokens skips the clean runs (e.g. when several SAEs are scored on the same contexts).
    """
    hook_name = hook_name or sae.cfg.hook_name
    if not hook_name:
        raise ValueError("no hook name: pass hook_name or use an SAE whose cfg.hook_name is set")
    _check_tokens(tokens)
    mask_BQ = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    splice_BQ = mask_BQ.clone()
    if splice_mask is not None:
        splice_BQ &= splice_mask.to(splice_BQ.device).bool()
    elif not splice_bos:
        if bos_token_id is None:
            bos_token_id = getattr(getattr(model, "cfg", None), "bos_token_id", None)
        if bos_token_id is not None:
            splice_BQ &= tokens != bos_token_id

    def run(spliced: JumpReLUSAE) -> float:
        return _mean_nll(
            model,
            tokens,
            attention_mask,
            batch_size,
            lambda rows: splice(model, [(hook_name, spliced)], positions=splice_BQ[rows]),
        )

    if ce_clean is None:
        ce_clean = next_token_loss(model, tokens, attention_mask=attention_mask, batch_size=batch_size)
    ce_sae, ce_zero = run(sae), run(_zero_sae(sae))
    gap = ce_zero - ce_clean
    return DeltaLossResult(
        hook_name=hook_name,
        n_tokens=int((mask_BQ[:, 1:] & mask_BQ[:, :-1]).sum()),  # pairs of real tokens
        ce_clean=ce_clean,
        ce_sae=ce_sae,
        ce_zero=ce_zero,
        delta_loss=ce_sae - ce_clean,
        fraction_recovered=(ce_zero - ce_sae) / gap if gap != 0 else float("nan"),
    )


@torch.no_grad()
def next_token_loss(
    model: HookableLM,
    tokens: Int[Tensor, "batch pos"],
    *,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    batch_size: int | None = None,
) -> float:
    """Mean next-token cross-entropy of the unmodified model over pairs of real tokens."""
    _check_tokens(tokens)
    return _mean_nll(model, tokens, attention_mask, batch_size, None)


def _zero_sae(sae: JumpReLUSAE) -> JumpReLUSAE:
    """An SAE like ``sae`` whose weights are all 0: its latents stay at 0 and its reconstruction is
    exactly 0, so splicing it zero-ablates the activation."""
    return JumpReLUSAE(replace(sae.cfg, d_sae=1, input_scale=1.0), device=sae.W_enc.device)


def _mean_nll(
    model: HookableLM,
    tokens: Tensor,
    attention_mask: Tensor | None,
    batch_size: int | None,
    context: Callable[[slice], AbstractContextManager[Any]] | None,
) -> float:
    """Mean next-token NLL over real pairs, ``batch_size`` rows a pass; ``context(rows)`` is entered
    around each pass (e.g. an SAE splice; None: the unmodified model)."""
    mask_BQ = torch.ones_like(tokens, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    total, n_tokens = 0.0, 0
    step = batch_size or tokens.shape[0]
    for start in range(0, tokens.shape[0], step):
        rows = slice(start, start + step)
        kwargs = {} if attention_mask is None else {"attention_mask": attention_mask[rows]}
        with nullcontext() if context is None else context(rows):
            logits = model(tokens[rows], **kwargs)
        nll, n = _next_token_nll(logits, tokens[rows], mask_BQ[rows])
        total, n_tokens = total + nll, n_tokens + n
    if n_tokens == 0:
        raise ValueError("no next-token pairs of real tokens to score")
    return total / n_tokens


class SAEEvaluation(NamedTuple):
    """Both evaluations of one SAE on the same held-out contexts."""

    eval: SAEEvalResult
    """Reconstruction and sparsity on the contexts' kept activations."""
    delta_loss: DeltaLossResult
    """LM loss with the SAE spliced in, on the first ``delta_loss_contexts`` of them."""

    def save(self, folder: str | Path) -> None:
        """``eval.json`` and ``delta_lm_loss.json`` into the SAE's folder."""
        self.eval.save(folder)
        self.delta_loss.save(folder)


@torch.no_grad()
def evaluate_on_source(
    model: HookableLM,
    sae: JumpReLUSAE,
    source: ActivationSource,
    *,
    split: str = "eval",
    delta_loss_contexts: int = 4,
    eval_batch_contexts: int = 1,
    ce_clean: float | None = None,
) -> SAEEvaluation:
    """:func:`evaluate_sae` on every row of ``split`` and :func:`delta_lm_loss` on its first
    ``delta_loss_contexts`` contexts, splicing only positions the source keeps (``ce_clean`` of an
    earlier SAE's evaluation on the same source skips the clean runs)."""
    hook = source.check_sae(sae)
    source.check_eval_contexts(max(1, delta_loss_contexts) if split == "eval" else 0)
    hooks = [hook, sae.cfg.hook_name_out] if sae.cfg.is_transcoder else [hook]
    device = sae.W_enc.device
    rows = (
        tuple(r.activations[h].to(device) for h in hooks)
        if len(hooks) == 2
        else r.activations[hook].to(device)
        for r in source.iter_rows(hooks, split)
    )
    contexts, r = source.contexts(), source.contexts().split_range(split)
    result = evaluate_sae(sae, rows)
    result = replace(result, split=split, n_contexts=len(r), source_fingerprint=source.fingerprint)
    start, stop = r.start, min(r.stop, r.start + delta_loss_contexts)
    device, mask = getattr(model, "device", "cpu"), contexts.attention_mask(start, stop)
    delta = delta_lm_loss(
        model,
        sae,
        contexts.tokens_NL[start:stop].long().to(device),
        attention_mask=None if mask is None else mask.to(device),
        splice_mask=contexts.keep_mask(start, stop, source.contexts_config.exclude).to(device),
        batch_size=eval_batch_contexts,
        ce_clean=ce_clean,
    )
    return SAEEvaluation(result, replace(delta, n_contexts=stop - start, split=split))


def _check_tokens(tokens: Tensor) -> None:
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be [batch, pos] with pos >= 2, got shape {tuple(tokens.shape)}")


def _next_token_nll(
    logits_BQV: Tensor, tokens_BQ: Tensor, mask_BQ: Tensor, chunk: int = 512
) -> tuple[float, int]:
    """Summed cross-entropy of predicting token q+1 from position q over pairs of real tokens, and their
    count; float64, ``chunk`` positions at a time (a [chunk, vocab] float64 block, not the whole batch)."""
    valid_BQ = (mask_BQ[:, 1:] & mask_BQ[:, :-1]).to(logits_BQV.device)
    rows_N, pos_N = valid_BQ.nonzero(as_tuple=True)
    target_N = tokens_BQ.to(logits_BQV.device)[rows_N, pos_N + 1]
    total = 0.0
    for start in range(0, target_N.shape[0], chunk):
        part = slice(start, start + chunk)
        logits_nV = logits_BQV[rows_N[part], pos_N[part]].double()
        nll_n = logits_nV.logsumexp(-1) - logits_nV.gather(-1, target_N[part, None])[:, 0]
        total += float(nll_n.sum())
    return total, int(target_N.shape[0])


def _json_safe(value: Any) -> Any:
    """NaN and inf as null, so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
