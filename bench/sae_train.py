"""Benchmark: g2interp's JumpReLU trainer against SAELens's own SAETrainer on identical activations.

Speed: both train the same Gemma Scope objective (Adam (0, 0.999), L0 penalty with the same
coefficient, bandwidth and initial weights) for the same steps on the same batches, then both SAEs are
evaluated on the same held-out batch. Two regimes are timed:

* ``init``: thresholds at Gemma Scope's 0.001, so about half the latents fire (the start of training);
* ``sparse``: one threshold chosen so the first batch has L0 ≈ ``--target-l0`` (trained-SAE sparsity,
  reached in a quick run without training for hours).

Quality (``--quality STORE``): a whole target-L0 run on a store's training batches, the same batches in
the same order for every trainer: g2interp's ``short-run`` recipe (Gemma Scope 2's quadratic L0 penalty
with directly trained thresholds, the data-dependent start and the dead-latent loss) against SAELens's
JumpReLU with the same quadratic penalty, λ, learning rate and warm-up, from its own initialisation and
from g2interp's data-dependent one; held-out L0, FVU and dead latents on the store's held-out rows.

    python bench/sae_train.py                          # quick synthetic run
    python bench/sae_train.py --activations acts.safetensors --steps 20
    python bench/sae_train.py --activations runs/demo/store   # a store folder
    python bench/sae_train.py --quality runs/store --key blocks.6.hook_resid_post --quality-tokens 786432

Speeds on a shared CPU vary with the load; compare the ratio, measured in one run.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
from common import sync
from sae_quality import fit_saelens, quality_comparison
from safetensors.torch import load_file

from g2interp.sae import SAETrainer, SAETrainingConfig, evaluate_sae, make_saes

logger = logging.getLogger("bench.sae_train")


def synthetic_batches(n: int, batch: int, d_in: int, seed: int = 0) -> list[torch.Tensor]:
    """Sparse sums of 2·d_in random unit directions (≈ 32 active per token, heavy-tailed), plus noise."""
    gen = torch.Generator().manual_seed(seed)
    n_true = 8 * d_in
    dirs = torch.randn(n_true, d_in, generator=gen)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    freq = 32 / n_true * torch.rand(n_true, generator=gen).pow(2) * 3  # uneven feature frequencies
    out = []
    for _ in range(n):
        on = torch.rand(batch, n_true, generator=gen) < freq
        mags = torch.empty(batch, n_true).exponential_(generator=gen) * on
        out.append(mags @ dirs * 10.0 + 0.1 * torch.randn(batch, d_in, generator=gen))
    return out


def store_rows(path: Path, hook: str | None, need: int) -> torch.Tensor:
    """Up to ``need`` rows of one hook of an activation store (``g2interp capture``), in shard order."""
    from g2interp.activations import ActivationStore

    store = ActivationStore(path)
    if hook is not None and hook not in store.hooks:
        raise SystemExit(f"{path} holds no hook {hook!r}; it has {store.hooks}")
    hook = hook or store.hooks[0]
    indices, have = [], 0
    for record in store.shards:
        if have >= need:
            break
        indices.append(record.index)
        have += record.rows
    return store.read_rows([hook], indices).activations[hook]


def file_batches(path: str, key: str | None, batch: int, n: int) -> list[torch.Tensor]:
    if Path(path).is_dir():
        acts = store_rows(Path(path), key, batch * n).float()
        acts = acts.reshape(acts.shape[0], -1)
        return _cycle(acts, path, batch, n)
    tensors = load_file(path)
    floats = [k for k, t in tensors.items() if t.dim() >= 2 and t.is_floating_point()]
    if key is None and not floats:
        raise SystemExit(f"{path} holds no floating-point tensor of 2 or more dimensions")
    if key is not None and key not in tensors:
        raise SystemExit(f"{path} has no tensor {key!r}; it has {sorted(tensors)}")
    name = key or floats[0]
    return _cycle(tensors[name].reshape(-1, tensors[name].shape[-1]).float(), path, batch, n)


def _cycle(acts: torch.Tensor, path: str, batch: int, n: int) -> list[torch.Tensor]:
    """``n`` batches of ``batch`` rows, the rows repeated when there are too few."""
    if acts.shape[0] < batch * n:
        reps = math.ceil(batch * n / acts.shape[0])
        logger.warning("%s has %d rows; cycling it %d times", path, acts.shape[0], reps)
        acts = acts.repeat(reps, 1)
    return [acts[i * batch : (i + 1) * batch].clone() for i in range(n)]


def train_g2interp(cfg: SAETrainingConfig, init: dict[str, torch.Tensor], batches: list[torch.Tensor]):
    device = batches[0].device
    sae = make_saes(cfg)[0].to(device)
    with torch.no_grad():
        for name, t in init.items():
            getattr(sae, name).copy_(t)
    trainer = SAETrainer(cfg, sae, batches, progress=False)
    sync(device)
    start = time.perf_counter()
    final = trainer.fit()[0]
    sync(device)
    return time.perf_counter() - start, final


def train_saelens(
    cfg: SAETrainingConfig, init: dict[str, torch.Tensor], batches: list[torch.Tensor], scale: float
):
    from sae_lens.saes.jumprelu_sae import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    sl_cfg = JumpReLUTrainingSAEConfig(
        d_in=cfg.d_in,
        d_sae=cfg.d_sae,
        jumprelu_init_threshold=cfg.threshold_init,
        jumprelu_bandwidth=cfg.bandwidth,
        l0_coefficient=cfg.l0_coefficient,
        l0_warm_up_steps=cfg.l0_warmup_steps,
        apply_b_dec_to_input=False,
        normalize_activations="none",  # fed the batches pre-scaled by g2interp's input scale
        device=str(batches[0].device),
    )
    sae = JumpReLUTrainingSAE(sl_cfg)
    with torch.no_grad():
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(init[name])
        sae.threshold.copy_(init["threshold"])
    scaled = [b * scale for b in batches]  # scaling is outside the timed region here, inside it for g2interp
    return fit_saelens(sae, cfg, iter(scaled), scale)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--activations",
        help="safetensors file of activations [..., d_in] or an activation store folder (default: synthetic)",
    )
    parser.add_argument(
        "--key",
        help="tensor name in an --activations file, or hook name in a store folder (default: the first)",
    )
    parser.add_argument("--steps", type=int, default=6, help="training steps per trainer and regime")
    parser.add_argument("--d-in", type=int, default=640)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--l0-coefficient", type=float, default=6e-4)
    parser.add_argument("--target-l0", type=float, default=50.0, help="L0 the sparse regime starts at")
    parser.add_argument("--regimes", default="init,sparse")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="where both trainers run (the batches live there)")
    parser.add_argument("--quality", metavar="STORE", help="run the target-L0 quality comparison on a store")
    parser.add_argument(
        "--quality-tokens", type=int, default=786_432, help="tokens each quality run trains on"
    )
    parser.add_argument("--quality-l0", type=float, default=40.0, help="target L0 of the quality runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quality:
        quality_comparison(args)
        return

    n = args.steps + 1
    if args.activations:
        batches = file_batches(args.activations, args.key, args.batch, n)
        args.d_in = batches[0].shape[-1]
    else:
        batches = synthetic_batches(n, args.batch, args.d_in)
    batches = [b.to(args.device) for b in batches]
    train, held_out = batches[:-1], batches[-1:]
    cfg = SAETrainingConfig(
        d_in=args.d_in,
        d_sae=args.d_sae,
        batch_size=args.batch,
        total_tokens=args.batch * args.steps,
        lr_warmup_steps=0,
        l0_warmup_steps=0,
        l0_coefficient=args.l0_coefficient,
        n_norm_batches=min(8, args.steps),
        log_every=10**6,
    )
    head = torch.cat(train[: cfg.n_norm_batches]).double()
    scale = float(1.0 / math.sqrt(head.pow(2).sum(-1).mean()))  # the scale g2interp's trainer will find

    rows = []
    for regime in args.regimes.split(","):
        init_sae = make_saes(cfg)[0]
        init = {name: p.detach().clone().to(args.device) for name, p in init_sae.named_parameters()}
        if regime == "sparse":
            with torch.no_grad():
                pre = (train[0] * scale) @ init["W_enc"]
                kth = torch.topk(pre.flatten(), int(args.target_l0 * args.batch)).values[-1]
                init["threshold"].fill_(float(kth))
        elif regime != "init":
            raise SystemExit(f"unknown regime {regime!r}")
        runs = {
            "g2interp": train_g2interp(cfg, init, train),
            "saelens": train_saelens(cfg, init, train, scale),
        }
        results = {}
        for name, (elapsed, sae) in runs.items():
            ev = evaluate_sae(sae, held_out)
            results[name] = (cfg.total_tokens / elapsed, ev.fvu, ev.l0)
        rows.append((regime, results))

    print(
        f"\nd_in={args.d_in} d_sae={args.d_sae} batch={args.batch} steps={args.steps} "
        f"λ={args.l0_coefficient} device={args.device} threads={torch.get_num_threads()} "
        f"data={'synthetic' if not args.activations else args.activations}"
    )
    header = f"{'regime':8} {'trainer':9} {'tokens/s':>10} {'FVU':>7} {'L0':>8} {'speed-up':>9}"
    print(header)
    print("-" * len(header))
    for regime, results in rows:
        ref_speed = results["saelens"][0]
        for name, (speed, fvu, l0) in results.items():
            ratio = f"{speed / ref_speed:.2f}x" if name == "g2interp" else "1.00x"
            print(f"{regime:8} {name:9} {speed:10.0f} {fvu:7.3f} {l0:8.1f} {ratio:>9}")


if __name__ == "__main__":
    main()
