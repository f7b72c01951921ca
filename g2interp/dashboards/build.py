"""Precomputed latent dashboards: one pass of the SAE over a source's held-out contexts, everything per latent kept.

For each latent of an SAE, :func:`build_dashboards` records

* its **top-activating contexts**: the ``n_top`` contexts whose largest activation of the latent is
  highest, each as a window of ``window`` tokens either side of that maximum with the latent's
  activation on every token (streamed: a running top-k over contexts, no second pass);
* its **activation histogram** over the tokens it fires on (log-spaced bins, fixed edges, so it
  accumulates batch by batch), its **density** (fraction of tokens it fires on), mean and max;
* its **logit effects**: the decoder direction read by the unembedding, ``W_dec[f] · diag(1 + w_ln) ·
  W_Uᵀ`` (through the final norm's scale; the norm's division by the residual's RMS is left out, so the
  numbers rank tokens rather than predict logits), top ``n_logits`` promoted and suppressed tokens.

The activations come from an :class:`~g2interp.activations.source.ActivationSource` (the SAE's store, or
the same packing captured on the fly), by default its held-out ``eval`` contexts; the model is only read for
its unembedding and tokenizer. Results go to ``SAE_FOLDER/dashboards/`` as safetensors +
JSON, each file written atomically and the manifest last (its presence marks a complete build); see
:class:`g2interp.dashboards.store.Dashboards` for reading them back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from safetensors.torch import save as safetensors_bytes
from torch import Tensor
from tqdm.auto import tqdm

from g2interp.activations.corpus import PackedContexts
from g2interp.activations.source import ActivationSource
from g2interp.cli_config import require_ints
from g2interp.dashboards.constants import (
    DASHBOARD_FORMAT,
    DASHBOARD_MANIFEST_FILE,
    DASHBOARD_TENSORS_FILE,
    DASHBOARD_VOCAB_FILE,
    DASHBOARDS_DIR,
)
from g2interp.files import atomic_write_bytes, atomic_write_text
from g2interp.sae.sae import JumpReLUSAE

logger = logging.getLogger(__name__)
_HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


@dataclass(frozen=True)
class DashboardConfig:
    """What a dashboard build keeps per latent, and how it batches the work."""

    n_top: int = 20
    """Top-activating contexts kept per latent."""
    window: int = 12
    """Tokens kept either side of each top activation (a window holds ``2 * window + 1`` tokens)."""
    n_logits: int = 10
    """Promoted and suppressed tokens kept per latent."""
    hist_min_log10: float = -3.0
    """log10 of the lowest histogram edge (smaller activations fall in the first bin)."""
    hist_max_log10: float = 7.0
    """log10 of the highest histogram edge (larger activations fall in the last bin)."""
    hist_bins_per_decade: int = 10
    """Histogram resolution: bins per factor of ten."""
    batch_contexts: int = 8
    """Contexts encoded at once (each a ``context_length x d_sae`` block of activations)."""
    latent_chunk: int = 128
    """Latents per unembedding product in the logit effects (each is a ``chunk x vocab`` float block)."""
    through_ln_final: bool = True
    """Multiply decoder directions by the final norm's scale ``1 + w`` before the unembedding."""

    def __post_init__(self) -> None:
        require_ints(self, "n_top", "n_logits", "hist_bins_per_decade", "batch_contexts", "latent_chunk")
        require_ints(self, "window", minimum=0)
        if not self.hist_min_log10 < self.hist_max_log10:
            raise ValueError(
                f"hist_min_log10 ({self.hist_min_log10}) must be below hist_max_log10 ({self.hist_max_log10})"
            )

    @property
    def n_bins(self) -> int:
        return round((self.hist_max_log10 - self.hist_min_log10) * self.hist_bins_per_decade)

    def hist_edges_log10(self) -> list[float]:
        """The ``n_bins + 1`` histogram edges, as log10 of the activation."""
        step = (self.hist_max_log10 - self.hist_min_log10) / self.n_bins
        return [self.hist_min_log10 + i * step for i in range(self.n_bins + 1)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class LogitEffects(NamedTuple):
    """Tokens each latent's decoder direction promotes and suppresses through the unembedding."""

    promoted_ids: Int[Tensor, "d_sae k"]
    """Token ids with the largest effect, highest first."""
    promoted_values: Float[Tensor, "d_sae k"]
    """Their effects (logit per unit of activation)."""
    suppressed_ids: Int[Tensor, "d_sae k"]
    """Token ids with the most negative effect, most negative first."""
    suppressed_values: Float[Tensor, "d_sae k"]
    """Their effects."""


class BuildResult(NamedTuple):
    """What :func:`build_dashboards` wrote."""

    folder: Path
    """The dashboards folder."""
    n_contexts: int
    """Contexts run."""
    n_tokens: int
    """Tokens counted (excluded positions left out)."""
    dead_fraction: float
    """Latents that fired on none of those tokens."""
    seconds: float
    """Wall time of the build."""


def sae_fingerprint(sae: JumpReLUSAE) -> str:
    """sha256 over the SAE's saved weights (input scale folded in) and its hook: what dashboards describe."""
    digest = hashlib.sha256(sae.cfg.hook_name.encode())
    for name, tensor in sorted(sae.folded_weights().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def residual_directions(model: Any, sae: JumpReLUSAE) -> Float[Tensor, "d_sae d_model"] | None:
    """What each latent's decoder direction adds to the residual stream, or None when that is unknown.

    Residual-stream and block-output SAEs write there directly; an ``attn.hook_z`` SAE's directions go
    through the block's output projection and the post-attention norm's scale ``1 + w``.
    """
    W_dec_FD = sae.folded_weights()["W_dec"].float()
    d_model = model.cfg.d_model
    if W_dec_FD.shape[1] == d_model:
        return W_dec_FD
    match = _HOOK_Z.match(sae.cfg.hook_name)
    if match and W_dec_FD.shape[1] == model.cfg.n_heads * model.cfg.d_head:
        block = model.blocks[int(match.group(1))]
        W_O = block.attn.o_proj.weight.detach().float().to(W_dec_FD.device)  # [M, H*D]
        return (W_dec_FD @ W_O.T) * (1.0 + block.ln1_post.weight.detach().float().to(W_dec_FD.device))
    return None


@torch.no_grad()
def logit_effects(
    model: Any, sae: JumpReLUSAE, k: int = 10, *, through_ln_final: bool = True, chunk: int = 128
) -> LogitEffects:
    """Top ``k`` promoted / suppressed tokens of every latent: ``W_dec[f] · diag(1 + w_ln) · W_Uᵀ``
    (``W_dec[f]`` as it reaches the residual stream, see :func:`residual_directions`)."""
    W_U_VD = model.W_U.detach().float()
    W_dec_FD = residual_directions(model, sae)
    if W_dec_FD is None:
        raise ValueError(
            f"the SAE on {sae.cfg.hook_name!r} writes {sae.cfg.d_in} features, neither the residual stream's "
            f"{W_U_VD.shape[1]} nor an attn.hook_z: its logit effects are unknown"
        )
    W_dec_FD = W_dec_FD.to(W_U_VD.device)
    if through_ln_final:
        W_dec_FD = W_dec_FD * (1.0 + model.ln_final.weight.detach().float().to(W_dec_FD.device))
    k = min(k, W_U_VD.shape[0])
    parts: list[tuple[Tensor, ...]] = []
    for start in range(0, W_dec_FD.shape[0], chunk):
        effect_cV = W_dec_FD[start : start + chunk] @ W_U_VD.T
        top, bottom = effect_cV.topk(k, dim=-1), effect_cV.topk(k, dim=-1, largest=False)
        parts.append((top.indices, top.values, bottom.indices, bottom.values))
    return LogitEffects(*(torch.cat([p[i] for p in parts]).cpu() for i in range(4)))


class _Accumulator:
    """Streaming per-latent statistics: firing counts, sums, log-histograms and the top-k contexts."""

    def __init__(self, d_sae: int, cfg: DashboardConfig):
        self.cfg = cfg
        n, F, W = cfg.n_top, d_sae, 2 * cfg.window + 1
        self.n_tokens = 0
        self.fired_F = torch.zeros(F, dtype=torch.int64)
        self.sum_F = torch.zeros(F, dtype=torch.float64)
        self.hist_flat = torch.zeros(F * cfg.n_bins, dtype=torch.int64)  # [F * n_bins]
        self.top_val_nF = torch.full((n, F), -1.0)  # -1: empty slot (activations are >= 0)
        self.top_ctx_nF = torch.full((n, F), -1, dtype=torch.int64)
        self.top_pos_nF = torch.full((n, F), -1, dtype=torch.int64)
        self.top_win_nFW = torch.zeros(n, F, W)
        self.offsets_W = torch.arange(-cfg.window, cfg.window + 1)

    def add(self, acts_BQF: Tensor, first_context: int) -> None:
        """Fold in a batch of activations (excluded positions already zeroed)."""
        cfg = self.cfg
        Q = acts_BQF.shape[1]
        fired_BQF = acts_BQF > 0
        self.fired_F += fired_BQF.sum((0, 1))
        self.sum_F += acts_BQF.sum((0, 1), dtype=torch.float64)
        nz = fired_BQF.nonzero()  # [M, 3] (b, q, f), the few firing entries
        if nz.numel():
            values = acts_BQF[nz[:, 0], nz[:, 1], nz[:, 2]]
            bins = ((values.log10() - cfg.hist_min_log10) * cfg.hist_bins_per_decade).floor()
            bins = bins.clamp(0, cfg.n_bins - 1).long()
            self.hist_flat += torch.bincount(nz[:, 2] * cfg.n_bins + bins, minlength=self.hist_flat.numel())
        # Top-k over contexts: each context enters with its largest activation of the latent.
        ctx_max_BF, ctx_pos_BF = acts_BQF.max(dim=1)
        n = cfg.n_top
        all_val = torch.cat([self.top_val_nF, ctx_max_BF])  # [n + B, F]
        new_val_nF, idx_nF = all_val.topk(n, dim=0)
        from_old_nF = idx_nF < n
        old_idx_nF = idx_nF.clamp(max=n - 1)
        new_b_nF = (idx_nF - n).clamp(min=0)
        new_win_nFW = self.top_win_nFW.gather(0, old_idx_nF[..., None].expand(-1, -1, self.offsets_W.numel()))
        new_ctx_nF = torch.where(from_old_nF, self.top_ctx_nF.gather(0, old_idx_nF), new_b_nF + first_context)
        new_pos_nF = torch.where(
            from_old_nF, self.top_pos_nF.gather(0, old_idx_nF), ctx_pos_BF.gather(0, new_b_nF)
        )
        entered = (~from_old_nF & (new_val_nF > 0)).nonzero()  # [M, 2] (slot, latent)
        if entered.numel():
            slot, latent = entered[:, 0], entered[:, 1]
            b = new_b_nF[slot, latent]
            pos_MW = new_pos_nF[slot, latent][:, None] + self.offsets_W
            inside_MW = (pos_MW >= 0) & (pos_MW < Q)
            window_MW = acts_BQF[b[:, None], pos_MW.clamp(0, Q - 1), latent[:, None]] * inside_MW
            new_win_nFW[slot, latent] = window_MW
        self.top_val_nF, self.top_ctx_nF, self.top_pos_nF = new_val_nF, new_ctx_nF, new_pos_nF
        self.top_win_nFW = new_win_nFW

    def tensors(self, contexts: PackedContexts) -> dict[str, Tensor]:
        """Everything per latent, latent-major (``[d_sae, ...]``) so one latent is one contiguous slice."""
        valid_nF = self.top_val_nF > 0
        ctx_nF = torch.where(valid_nF, self.top_ctx_nF, -1)
        pos_nF = torch.where(valid_nF, self.top_pos_nF, -1)
        L = contexts.context_length
        pos_nFW = pos_nF[..., None] + self.offsets_W
        length_nF = contexts.lengths_N.long()[ctx_nF.clamp(min=0)]
        inside_nFW = valid_nF[..., None] & (pos_nFW >= 0) & (pos_nFW < length_nF[..., None])
        tokens_nFW = contexts.tokens_NL.long()[ctx_nF.clamp(min=0)[..., None], pos_nFW.clamp(0, L - 1)]
        tokens_nFW = torch.where(inside_nFW, tokens_nFW, -1)
        n_tokens = max(self.n_tokens, 1)
        fired = self.fired_F.clamp(min=1)
        return {
            "density": (self.fired_F.double() / n_tokens).float(),
            "n_fired": self.fired_F,
            "mean_activation": (self.sum_F / fired).float(),
            "max_activation": self.top_val_nF[0].clamp(min=0),
            "hist_counts": self.hist_flat.view(-1, self.cfg.n_bins).to(torch.int32),
            "top_values": self.top_val_nF.clamp(min=0).T.contiguous(),
            "top_context": ctx_nF.T.to(torch.int32).contiguous(),
            "top_position": pos_nF.T.to(torch.int32).contiguous(),
            "top_tokens": tokens_nFW.permute(1, 0, 2).to(torch.int32).contiguous(),
            "top_acts": (self.top_win_nFW * inside_nFW).permute(1, 0, 2).contiguous(),
            "top_center_tokens": tokens_nFW[:, :, self.cfg.window].T.to(torch.int32).contiguous(),
        }


def default_folder(sae_folder: str | Path) -> Path:
    """Where an SAE's dashboards live: ``SAE_FOLDER/dashboards``."""
    return Path(sae_folder) / DASHBOARDS_DIR


def _dense_batches(rows, lo: int, hi: int, length: int, batch_contexts: int):
    """Rows of contexts ``lo:hi`` as ``[contexts, length, d]`` blocks (zeros where no row) and their keep masks."""
    acts = rows.activations[next(iter(rows.activations))]
    for s in range(lo, hi, batch_contexts):
        e = min(s + batch_contexts, hi)
        inside = (rows.contexts >= s) & (rows.contexts < e)
        c, q = rows.contexts[inside].long() - s, rows.positions[inside].long()
        x_BQD = acts.new_zeros(e - s, length, acts.shape[-1])
        x_BQD[c, q] = acts[inside]
        keep_BQ = torch.zeros(e - s, length, dtype=torch.bool)
        keep_BQ[c, q] = True
        yield s, x_BQD, keep_BQ


@torch.no_grad()
def build_dashboards(
    model: Any,
    sae: JumpReLUSAE,
    source: ActivationSource,
    out_folder: str | Path,
    cfg: DashboardConfig | None = None,
    *,
    split: str = "eval",
    progress: bool = True,
) -> BuildResult:
    """Encode ``source``'s rows of the SAE's hook over the contexts of ``split`` and write the dashboards.

    ``model`` gives the unembedding (logit effects) and the tokenizer (token texts).
    """
    cfg = cfg or DashboardConfig()
    start_time = time.perf_counter()
    hook = source.check_sae(sae)
    d_sae = sae.cfg.d_sae
    packed = source.contexts()
    span = packed.split_range(split)
    if len(span) == 0:
        raise ValueError(f"{source.name} holds no {split} contexts to build dashboards from")
    device = sae.W_enc.device
    acc = _Accumulator(d_sae, cfg)
    bar = tqdm(total=len(span), unit="ctx", desc=f"dashboards {hook}", disable=not progress)
    try:
        for rows in source.iter_rows(hook, split):
            lo, hi = int(rows.contexts.min()), int(rows.contexts.max()) + 1
            for first, x_BQD, keep_BQ in _dense_batches(
                rows, lo, hi, packed.context_length, cfg.batch_contexts
            ):
                acts_BQF = sae.encode(x_BQD.to(device)).float().cpu() * keep_BQ[..., None]
                acc.n_tokens += int(keep_BQ.sum())
                acc.add(acts_BQF, first)
                bar.update(x_BQD.shape[0])
    finally:
        bar.close()
    if acc.n_tokens == 0:
        raise ValueError("every position was excluded: no tokens to build dashboards from")
    tensors = acc.tensors(packed)
    if residual_directions(model, sae) is not None:
        effects = logit_effects(
            model, sae, cfg.n_logits, through_ln_final=cfg.through_ln_final, chunk=cfg.latent_chunk
        )
    else:  # no known way into the residual stream: no logit effects
        logger.warning("%s: no residual-stream direction for the latents, so no logit effects", hook)
        empty = torch.zeros(d_sae, 0)
        effects = LogitEffects(empty.long(), empty, empty.long(), empty)
    for name, t in effects._asdict().items():  # ids as int32, effects as float32
        tensors[name] = t.to(torch.int32) if name.endswith("_ids") else t.float()
    ids = torch.cat([tensors[k].flatten() for k in ("top_tokens", "promoted_ids", "suppressed_ids")]).unique()
    ids = ids[ids >= 0].tolist()
    vocab = {str(i): model.tokenizer.decode([i]) for i in ids} if model.tokenizer is not None else {}
    dead_fraction = float((tensors["n_fired"] == 0).float().mean())
    folder = Path(out_folder)
    manifest = {
        "format": DASHBOARD_FORMAT,
        "hook_name": hook,
        "d_in": sae.cfg.d_in,
        "d_sae": d_sae,
        "sae_fingerprint": sae_fingerprint(sae),
        "model_name": sae.cfg.model_name,
        "source": describe(source, split),
        "activations_fingerprint": source.fingerprint,
        "split": split,
        "n_contexts": len(span),
        "context_length": packed.context_length,
        "n_tokens": acc.n_tokens,
        "dead_fraction": dead_fraction,
        "hist_edges_log10": cfg.hist_edges_log10(),
        "config": cfg.to_dict(),
        "seconds": round(time.perf_counter() - start_time, 2),
    }
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / DASHBOARD_TENSORS_FILE, safetensors_bytes(tensors))
    atomic_write_text(folder / DASHBOARD_VOCAB_FILE, json.dumps(vocab, ensure_ascii=False) + "\n")
    atomic_write_text(folder / DASHBOARD_MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    logger.info(
        "dashboards of %s (%d latents, %d tokens, %.1f%% dead) written to %s in %.1f s",
        hook,
        d_sae,
        acc.n_tokens,
        100 * dead_fraction,
        folder,
        manifest["seconds"],
    )
    return BuildResult(folder, len(span), acc.n_tokens, dead_fraction, manifest["seconds"])


def describe(source: ActivationSource, split: str) -> str:
    """``store runs/s, eval split (64 contexts of 128)``: what the explorer shows as a build's origin."""
    contexts = source.contexts()
    return f"{source.name}, {split} split ({len(contexts.split_range(split))} contexts of {contexts.context_length})"


def dashboards_current(
    folder: str | Path,
    sae: JumpReLUSAE,
    cfg: DashboardConfig | None = None,
    *,
    source: ActivationSource | None = None,
    split: str = "eval",
) -> bool:
    """Whether ``folder`` holds a complete build for this SAE (and this config and source, when given)."""
    path = Path(folder) / DASHBOARD_MANIFEST_FILE
    if not path.is_file() or not (Path(folder) / DASHBOARD_TENSORS_FILE).is_file():
        return False
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    if manifest.get("format") != DASHBOARD_FORMAT or manifest.get("sae_fingerprint") != sae_fingerprint(sae):
        return False
    if cfg is not None and manifest.get("config") != cfg.to_dict():
        return False
    if source is None:
        return True
    return manifest.get("activations_fingerprint") == source.fingerprint and manifest.get("split") == split
