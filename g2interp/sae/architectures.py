"""The training SAE of each architecture, built from a :class:`~g2interp.sae.training.SAETrainingConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from g2interp.sae.jumprelu import JumpReLUTrainingSAE
from g2interp.sae.sae import JumpReLUSAE, SAEConfig
from g2interp.sae.training import SAETrainingConfig, TrainingSAE


def training_sae(
    cfg: SAETrainingConfig, *, l0_coefficient: float | None = None, seed: int | None = None
) -> Any:
    """A freshly initialised training SAE of ``cfg.architecture`` (seeded by ``cfg.init_seed``)."""
    if cfg.architecture == "jumprelu":
        return JumpReLUTrainingSAE.initialised(cfg, l0_coefficient=l0_coefficient, seed=seed)
    from g2interp.sae.topk import BatchTopKTrainingSAE

    return BatchTopKTrainingSAE(
        cfg.d_in,
        cfg.d_sae,
        k=cfg.target_l0,
        d_out=cfg.d_out,
        affine_skip=cfg.affine_skip,
        aux_k_coefficient=cfg.aux_coefficient,
        threshold_lr=cfg.topk_threshold_lr,
        matryoshka_widths=cfg.matryoshka_widths,  # empty unless architecture is "matryoshka" (validated)
        seed=cfg.init_seed if seed is None else seed,
    )


def make_saes(cfg: SAETrainingConfig, l0_coefficients: Sequence[float] | None = None) -> list[Any]:
    """One freshly initialised SAE per L0 coefficient (default: ``cfg.l0_coefficient``), same init.

    The top-k architectures have no L0 coefficient: they take one SAE (or as many as coefficients given,
    all alike)."""
    coefs = [cfg.l0_coefficient] if l0_coefficients is None else list(l0_coefficients)
    if not coefs:
        raise ValueError("l0_coefficients is empty")
    return [training_sae(cfg, l0_coefficient=c) for c in coefs]


def inference_sae(
    sae: TrainingSAE,
    cfg: SAETrainingConfig,
    input_scale: float = 1.0,
    output_scale: float | None = None,
    metadata: dict[str, Any] | None = None,
) -> JumpReLUSAE:
    """The inference SAE (a JumpReLU SAE or transcoder, whatever the architecture trained) of a training
    SAE, reading raw activations: the scales its inputs and targets were trained at folded in."""
    transcoder = (
        {"d_out": cfg.d_out, "hook_name_out": cfg.hook_name_out, "affine_skip": cfg.affine_skip}
        if cfg.is_transcoder
        else {}
    )
    config = SAEConfig(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        hook_name=cfg.hook_name,
        model_name=cfg.model_name,
        apply_b_dec_to_input=False,
        reshape_hook_z=cfg.reshape_hook_z,
        metadata=metadata or {},
        **transcoder,
    )
    tensors = sae.inference_tensors(input_scale, input_scale if output_scale is None else output_scale)
    device = next(iter(tensors.values())).device
    return JumpReLUSAE.from_tensors(tensors, config, source="training SAE", device=device)
