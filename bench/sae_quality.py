"""Quality half of bench/sae_train.py: one target-L0 run per trainer on a store's batches, same order.

* ``g2interp``: :func:`g2interp.sae.train_saes` with the ``short-run`` recipe (quadratic L0 penalty
  towards the target, thresholds trained directly, data-dependent start, dead-latent loss);
* ``saelens``: SAELens's ``JumpReLUTrainingSAE`` with ``jumprelu_sparsity_loss_mode="quadratic"``, the
  same target, λ, learning rate, warm-up and Adam betas, from its own initialisation;
* ``saelens+init``: the same, started from g2interp's data-dependent initial weights.

All read the store's training batches in the same seeded order (g2interp's stream); SAELens is fed them
pre-scaled by the input scale g2interp's trainer finds. Each result is evaluated on the store's held-out
rows (L0, FVU, latents that fire on none of them).
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Iterator
from itertools import islice
from typing import Any

import torch
from common import sync

from g2interp.activations.store import ActivationStore
from g2interp.sae import JumpReLUSAE, SAEConfig, evaluate_sae, plan_saes, train_saes

logger = logging.getLogger("bench.sae_quality")


def _batches(store: ActivationStore, hook: str, batch: int, n: int) -> Iterator[torch.Tensor]:
    """The first ``n`` batches of the stream :func:`train_saes` trains on (seed 0, endless epochs)."""
    stream = store.batches([hook], batch, start=0, seed=0, epochs=None, drop_last=True)
    for b in islice(stream, n):
        yield b[hook] if isinstance(b, dict) else b


def _saelens(
    spec: Any, store: ActivationStore, scale: float, init: dict[str, torch.Tensor] | None
) -> tuple[float, JumpReLUSAE]:
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    cfg = spec.training
    sl_cfg = JumpReLUTrainingSAEConfig(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        jumprelu_sparsity_loss_mode="quadratic",
        target_l0=cfg.target_l0,
        l0_coefficient=cfg.l0_coefficient,
        l0_warm_up_steps=cfg.l0_warmup_steps,
        jumprelu_bandwidth=cfg.bandwidth,
        apply_b_dec_to_input=False,
        normalize_activations="none",  # fed pre-scaled batches
        device="cpu",
    )
    sae = JumpReLUTrainingSAE(sl_cfg)
    if init is not None:
        with torch.no_grad():
            for name, tensor in init.items():
                getattr(sae, name).copy_(tensor)

    def provider() -> Iterator[torch.Tensor]:
        for b in _batches(store, spec.hook, cfg.batch_size, cfg.total_steps):
            yield b * scale

    return fit_saelens(sae, cfg, provider(), scale)


def fit_saelens(
    sae: Any, cfg: Any, batches: Iterator[torch.Tensor], scale: float
) -> tuple[float, JumpReLUSAE]:
    """Run SAELens's own ``SAETrainer`` on ``sae`` with ``cfg``'s schedule over pre-scaled ``batches``;
    the seconds it took and the result as an inference SAE reading raw activations."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer as SLTrainer

    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.total_steps * cfg.batch_size,  # whole batches, as g2interp trains
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_warm_up_steps=cfg.lr_warmup_steps,
        adam_beta1=cfg.adam_betas[0],
        adam_beta2=cfg.adam_betas[1],
        dead_feature_window=cfg.dead_window_steps,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SLTrainer(trainer_cfg, sae, batches)
    device = sae.W_enc.device
    sync(device)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit()
    sync(device)
    elapsed = time.perf_counter() - start
    tensors = {n: getattr(sae, n).detach() for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
    config = SAEConfig(d_in=cfg.d_in, d_sae=cfg.d_sae, input_scale=scale)
    final = JumpReLUSAE.from_tensors(tensors, config, device=device)
    final.fold_input_scale()
    return elapsed, final


def quality_comparison(args: Any) -> None:
    store = ActivationStore(args.quality)
    hook = args.key or store.hooks[0]
    (spec,) = plan_saes(
        store,
        hook,
        "short-run",
        d_sae=[args.d_sae],
        target_l0=[args.quality_l0],
        total_tokens=args.quality_tokens,
    )
    cfg = spec.training
    runs: dict[str, tuple[float, JumpReLUSAE]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        (result,) = train_saes(store, [spec], tmp, evaluate=False, progress=False)
        runs["g2interp"] = (time.perf_counter() - start, result.sae)
        # g2interp's input scale and its data-dependent start, read back from its first checkpoint
        scale = float(result.sae.cfg.metadata["input_scale_folded"])
    init = _g2interp_init(spec, store, scale)
    runs["saelens"] = _saelens(spec, store, scale, None)
    runs["saelens+init"] = _saelens(spec, store, scale, init)
    rows = [(name, cfg.total_tokens / t, *_held_out(store, hook, sae)) for name, (t, sae) in runs.items()]
    print(
        f"\nquality: {hook} of {args.quality}, d_sae={cfg.d_sae}, target L0 {cfg.target_l0:g}, "
        f"{cfg.total_tokens} tokens ({cfg.total_steps} steps x {cfg.batch_size}), λ={cfg.l0_coefficient:g}, "
        f"lr={cfg.lr:g}, threads={torch.get_num_threads()}; held out: {rows[0][5]} tokens"
    )
    header = f"{'trainer':13} {'tokens/s':>9} {'L0':>7} {'L0/target':>9} {'FVU':>7} {'dead':>7} {'speed':>7}"
    print(header)
    print("-" * len(header))
    ref = rows[1][1]
    for name, speed, l0, fvu, dead, _ in rows:
        print(
            f"{name:13} {speed:9.0f} {l0:7.1f} {l0 / cfg.target_l0:9.2f} {fvu:7.3f} {dead:7.1%} {speed / ref:6.2f}x"
        )


def _held_out(store: ActivationStore, hook: str, sae: JumpReLUSAE) -> tuple[float, float, float, int]:
    ev = evaluate_sae(sae, (r.activations[hook] for r in store.iter_rows(hook, "eval")))
    return ev.l0, ev.fvu, ev.dead_fraction, ev.n_tokens


def _g2interp_init(spec: Any, store: ActivationStore, scale: float) -> dict[str, torch.Tensor]:
    """g2interp's data-dependent start (b_dec at the mean, thresholds at the target's quantile), as its
    trainer computes it from the first batches, in SAELens's parameter names."""
    from g2interp.sae import SAETrainer

    cfg = spec.training
    trainer = SAETrainer(cfg, None, progress=False)
    head = list(_batches(store, spec.hook, cfg.batch_size, cfg.n_norm_batches))
    trainer.set_input_scale(head)  # the trainer's own start
    assert abs(trainer.input_scale - scale) <= 1e-6 * scale, (trainer.input_scale, scale)
    sae = trainer.saes[0]
    return {n: getattr(sae, n).detach().clone() for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")}
