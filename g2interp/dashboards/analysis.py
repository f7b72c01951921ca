"""Live analyses behind the explorer: an SAE on a typed text, and a probe head's score explained by latents.

* :func:`analyze_text` runs the model to the SAE's hook on one text and returns every token's latent
  activations, its strongest latents, and how well the SAE reconstructs the text (relative error, FVU,
  and the next-token loss with the reconstruction spliced in).
* :func:`explain_probe` splits a moderation probe head's logit into contributions of the SAE's latents
  at the layer the head reads: each latent's activation times the gradient of the logit with respect to
  it, summed over the classified tokens. For a logistic head with mean or last-token pooling this is
  exact: the head's direction projected on the latent's decoder direction, times the pooled activation.
  What the latents do not account for is reported as the SAE's reconstruction error term and the rest
  (biases, the decoder bias, other layers the head reads).
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor

from g2interp.sae.sae import JumpReLUSAE

_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")


class TextAnalysis(NamedTuple):
    """An SAE applied to one text."""

    tokens: list[str]
    """Text of each token (the first is BOS)."""
    token_ids: list[int]
    """Their ids."""
    acts: Float[Tensor, "pos d_sae"]
    """Every latent's activation on every token."""
    top_latents: Int[Tensor, "pos k"]
    """Strongest latents per token (ids; strongest first; ties and zeros included at the end)."""
    top_values: Float[Tensor, "pos k"]
    """Their activations."""
    l0: Int[Tensor, " pos"]
    """Latents active per token."""
    relative_error: Float[Tensor, " pos"]
    """``‖x - x̂‖² / ‖x‖²`` per token."""
    total_relative_error: float
    """``Σ‖x - x̂‖² / Σ‖x‖²`` over the tokens after BOS."""
    fvu: float
    """Fraction of variance unexplained over the tokens after BOS (NaN with fewer than two)."""
    ce_clean: float | None
    """Next-token loss of the model on the text (None unless asked for, or with one token)."""
    ce_sae: float | None
    """The same with the SAE's reconstruction spliced in at its hook (BOS left clean)."""


@torch.no_grad()
def analyze_text(
    model: Any, sae: JumpReLUSAE, text: str, *, k: int = 10, with_loss: bool = True, max_tokens: int = 512
) -> TextAnalysis:
    """Latents of every token of ``text`` (BOS prepended) and the SAE's reconstruction error on it."""
    from g2interp.sae.evaluate import delta_lm_loss

    hook = sae.cfg.hook_name
    if not hook:
        raise ValueError("the SAE names no hook (cfg.hook_name is empty)")
    tokens_1Q = model.tokenize(text, max_length=max_tokens).tokens
    x = model.capture(tokens_1Q, [hook])[hook]
    Q = tokens_1Q.shape[1]
    x_QD = x.reshape(Q, -1).to(sae.W_enc.device)
    if x_QD.shape[-1] != sae.cfg.d_in:
        raise ValueError(f"{hook} gives {x_QD.shape[-1]} features per token; the SAE reads {sae.cfg.d_in}")
    acts_QF = sae.encode(x_QD).float()
    err_QD = (sae.decode(acts_QF) - x_QD).double()
    x64_QD = x_QD.double()
    sq_err_Q = (err_QD * err_QD).sum(-1)
    sq_x_Q = (x64_QD * x64_QD).sum(-1)
    body = slice(1, None)  # BOS: an outlier SAEs are not trained on
    total_rel = float(sq_err_Q[body].sum() / sq_x_Q[body].sum()) if Q > 1 else math.nan
    centred = x64_QD[body] - x64_QD[body].mean(0)
    var = float((centred * centred).sum())
    fvu = float(sq_err_Q[body].sum()) / var if Q > 2 and var > 0 else math.nan
    top = acts_QF.topk(min(k, acts_QF.shape[1]), dim=-1)
    ce_clean = ce_sae = None
    if with_loss and Q > 1:
        delta = delta_lm_loss(model, sae, tokens_1Q)
        ce_clean, ce_sae = delta.ce_clean, delta.ce_sae
    ids = tokens_1Q[0].tolist()
    return TextAnalysis(
        tokens=[model.tokenizer.decode([i]) for i in ids],
        token_ids=ids,
        acts=acts_QF.cpu(),
        top_latents=top.indices.cpu(),
        top_values=top.values.cpu(),
        l0=(acts_QF > 0).sum(-1).cpu(),
        relative_error=(sq_err_Q / sq_x_Q.clamp(min=1e-30)).float().cpu(),
        total_relative_error=total_rel,
        fvu=fvu,
        ce_clean=ce_clean,
        ce_sae=ce_sae,
    )


class LatentAttribution(NamedTuple):
    """One latent's share of a probe head's logit."""

    latent: int
    """The latent."""
    attribution: float
    """Its contribution to the logit (positive: pushes towards 'violates')."""
    activation: float
    """Its activation summed over the classified tokens."""


class ProbeExplanation(NamedTuple):
    """A probe head's logit on one text, split over the SAE's latents."""

    policy: str
    """The head (harm type)."""
    hook_name: str
    """Where the SAE reads (one of the head's layers)."""
    probability: float
    """The head's calibrated probability."""
    logit: float
    """Its logit (Platt-calibrated)."""
    attributions: Float[Tensor, " d_sae"]
    """Contribution of every latent to the logit."""
    error_term: float
    """Contribution of the SAE's reconstruction error."""
    rest: float
    """``logit`` minus the latents and the error term: biases, decoder bias, the head's other layers."""
    up: list[LatentAttribution]
    """Latents pushing the score up, strongest first."""
    down: list[LatentAttribution]
    """Latents pushing it down, strongest first."""


def resid_layer(hook_name: str) -> int | None:
    """The layer of a ``blocks.L.hook_resid_post`` hook name, else None."""
    match = _RESID_POST.match(hook_name)
    return int(match.group(1)) if match else None


def probe_layers(moderator: Any, policy: str) -> tuple[int, ...]:
    """The layers whose ``hook_resid_post`` the moderator's probe head for ``policy`` reads."""
    heads = getattr(moderator, "heads", None)
    if heads is None or policy not in heads.heads:
        return ()
    return tuple(heads.heads[policy].cfg.all_layers)


def explain_probe(
    moderator: Any,
    sae: JumpReLUSAE,
    policy: str,
    prompt: str,
    response: str | None = None,
    *,
    top: int = 10,
) -> ProbeExplanation:
    """Split the probe head's logit for ``policy`` on a prompt (or a response to it) over the SAE's latents.

    The SAE must read ``blocks.L.hook_resid_post`` for a layer L the head reads.
    """
    from g2interp.constants import HOOK_RESID_POST
    from g2interp.moderation.features import TokenFeatures

    layers = probe_layers(moderator, policy)
    if not layers:
        raise ValueError(f"the moderator has no probe head for {policy!r}; only probe heads can be explained")
    layer = resid_layer(sae.cfg.hook_name)
    if layer not in layers:
        want = ", ".join(HOOK_RESID_POST.format(layer=x) for x in layers)
        raise ValueError(f"the {policy!r} head reads {want}; this SAE reads {sae.cfg.hook_name or 'no hook'}")
    head = moderator.heads.heads[policy]
    encoder = moderator.encoder
    enc = encoder.encode_prompt(prompt) if response is None else encoder.encode_response(prompt, response)
    hooks = [HOOK_RESID_POST.format(layer=x) for x in layers]
    run = moderator.runner.run([enc], hooks=hooks, stop_at_layer=max(layers) + 1)
    feats = TokenFeatures.from_run(run, [enc], layers, [enc.text])
    x_TD = run.acts[HOOK_RESID_POST.format(layer=layer)][0].float().to(sae.W_enc.device)
    with torch.enable_grad():
        f_TF = sae.encode(x_TD).detach().float().requires_grad_(True)
        err_TD = (x_TD - sae.decode(f_TF)).detach().requires_grad_(True)
        x_hat_TD = sae.decode(f_TF).float() + err_TD  # equals x_TD; the split sets what the gradient reaches
        start, end = enc.pool.start - enc.n_shared, enc.pool.end - enc.n_shared
        slot = layers.index(layer)
        acts_TLM, last_1LM = feats.acts_TLM.clone(), feats.last_NLM.clone()
        acts_TLM[:, slot] = x_hat_TD[start:end].cpu()
        last_1LM[0, slot] = x_hat_TD[int(run.lengths_B[0]) - 1].cpu()
        spliced = TokenFeatures(acts_TLM, feats.offsets, last_1LM, feats.layers, feats.texts)
        a, b = head.cfg.platt
        logit_1 = a * head.raw(spliced) + b  # the head's own calibrated logit
        logit_1.sum().backward()
    attr_F = (f_TF.detach() * f_TF.grad).sum(0).cpu()
    error_term = float((err_TD.detach() * err_TD.grad).sum())
    logit_1 = logit_1.detach()
    logit = float(logit_1[0])
    total_F = f_TF.detach().sum(0).cpu()
    order = torch.argsort(attr_F, descending=True)
    up = [
        LatentAttribution(int(i), float(attr_F[i]), float(total_F[i])) for i in order[:top] if attr_F[i] > 0
    ]
    down = [
        LatentAttribution(int(i), float(attr_F[i]), float(total_F[i]))
        for i in order.flip(0)[:top]
        if attr_F[i] < 0
    ]
    return ProbeExplanation(
        policy=policy,
        hook_name=sae.cfg.hook_name,
        probability=float(torch.sigmoid(logit_1[0])),
        logit=logit,
        attributions=attr_F,
        error_term=error_term,
        rest=logit - float(attr_F.sum()) - error_term,
        up=up,
        down=down,
    )
