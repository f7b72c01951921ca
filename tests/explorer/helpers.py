"""A tiny world for the explorer tests: a random Gemma 3 folder with a chat tokenizer, two SAEs (one with
dashboards and evaluations), and probe heads for two harm types.

``python -m tests.explorer.helpers OUT`` builds it in OUT and prints the environment to point
``streamlit run apps/explorer.py`` at it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NamedTuple

import torch

from tests.tiny import one_thread, save_chat_checkpoint

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "apps" / "explorer.py"
CORPUS = REPO / "tests" / "fixtures" / "corpus_small.jsonl"
RESID_HOOK = "blocks.1.hook_resid_post"
MLP_HOOK = "blocks.2.hook_mlp_out"
D_SAE = 64
DEAD = (0, 1, 2)  # latents given an unreachable threshold


class ExplorerWorld(NamedTuple):
    """Paths of the tiny world."""

    model: Path
    """Model folder (config.json, model.safetensors, tokenizer.json)."""
    store: Path
    """Activation store of both SAEs' hooks (24 contexts of 32 tokens, 8 held out)."""
    runs: Path
    """Runs folder holding both SAEs."""
    resid_sae: Path
    """SAE on ``blocks.1.hook_resid_post`` with dashboards, eval.json and delta_lm_loss.json."""
    mlp_sae: Path
    """SAE on ``blocks.2.hook_mlp_out`` with evaluations but no dashboards."""
    heads: Path
    """Probe heads: ``dangerous_content`` (logistic, layer 1, mean) and ``hate_speech`` (MLP, layers 1-2)."""
    empty_runs: Path
    """A runs folder with no SAE in it."""


def save_model(folder: Path) -> Path:
    """A random tiny Gemma 3 (4 layers, d_model 48) saved by transformers, with the chat tokenizer."""
    save_chat_checkpoint(folder, "gemma3", seed=0)
    return folder


def random_sae(model, hook: str, d_sae: int = D_SAE, seed: int = 0):
    """A JumpReLU SAE whose latents fire on some tokens of ``hook`` (thresholds at a quantile); DEAD never fire."""
    from g2interp.sae import JumpReLUSAE, SAEConfig

    ids = model.tokenize(["The quick brown fox jumps over the lazy dog.", "def f(x):\n    return x"]).tokens
    x = model.capture(ids, [hook])[hook].flatten(2).flatten(0, 1)  # [tokens, width] (hook_z heads joined)
    d_in = x.shape[-1]
    gen = torch.Generator().manual_seed(seed)
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, hook_name=hook, model_name="tiny", apply_b_dec_to_input=True)
    sae = JumpReLUSAE(cfg)
    with torch.no_grad():
        W_dec = torch.randn(d_sae, d_in, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.T)
        sae.b_dec.copy_(x.mean(0))
        pre = (x - x.mean(0)) @ W_dec.T
        sae.threshold.copy_(pre.quantile(0.8, dim=0).clamp(min=1e-3))
        sae.threshold[list(DEAD)] = 1e9
    return sae


def save_heads(model, folder: Path) -> Path:
    """Two random probe heads on the tiny model: a pooled one and an attention one reading two layers."""
    from g2interp.moderation import HeadConfig, HeadSet, ProbeHead

    d = model.cfg.d_model
    configs = [
        HeadConfig("dangerous_content", layers=(1,), d_model=d, platt=(1.0, 0.0), threshold=0.5),
        HeadConfig("hate_speech", "attention", layers=(1, 2), d_model=d, n_queries=2, threshold=0.4),
    ]
    heads = {}
    gen = torch.Generator().manual_seed(1)
    for cfg in configs:
        head = ProbeHead(cfg)
        with torch.no_grad():
            for p in head.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            head.scale_F.fill_(2.0)
        heads[cfg.name] = head.eval()
    HeadSet(heads, HeadSet.model_info_of(model.cfg), {"what": "random heads for the explorer tests"}).save(
        folder
    )
    return folder


def build_world(root: Path) -> ExplorerWorld:
    """Everything the explorer tests read, under ``root``."""
    from dataclasses import replace

    from g2interp import ActivationStore, CaptureConfig, capture, evaluate_on_source, load_model
    from g2interp.dashboards import DashboardConfig, build_dashboards, default_folder

    root = Path(root)
    with one_thread():
        model_dir = save_model(root / "model")
        model = load_model(model_dir, device="cpu", dtype=torch.float32)
        cfg = CaptureConfig(data=str(CORPUS), hooks=(RESID_HOOK, MLP_HOOK), out=str(root / "store"), model=str(model_dir),
                            context_length=32, max_contexts=24, eval_contexts=8, contexts_per_shard=4, progress=False)  # fmt: skip
        capture(model, cfg)
        store = ActivationStore(cfg.out)
        runs = root / "runs"
        resid_dir = runs / "tiny" / RESID_HOOK / "sae_0"
        mlp_dir = runs / "tiny" / MLP_HOOK / "sae_0"
        for hook, folder, seed in ((RESID_HOOK, resid_dir, 0), (MLP_HOOK, mlp_dir, 1)):
            sae = random_sae(model, hook, seed=seed)
            sae.cfg = replace(
                sae.cfg, metadata={"activations": store.provenance(hook)}
            )  # as train_saes records it
            sae.save(folder)
            evaluate_on_source(model, sae, store, delta_loss_contexts=4).save(folder)
        resid = random_sae(model, RESID_HOOK)
        build_dashboards(
            model, resid, store, default_folder(resid_dir), DashboardConfig(n_top=8, window=6), progress=False
        )
        heads = save_heads(model, root / "heads")
        empty = root / "empty_runs"
        empty.mkdir(exist_ok=True)
    return ExplorerWorld(model_dir, store.path, runs, resid_dir, mlp_dir, heads, empty)


def environment(world: ExplorerWorld) -> dict[str, str]:
    """The environment variables that point the explorer at ``world``."""
    return {
        "G2INTERP_EXPLORER_MODEL": str(world.model),
        "G2INTERP_EXPLORER_RUNS": str(world.runs),
        "G2INTERP_EXPLORER_HEADS": str(world.heads),
    }


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/explorer_fixture")
    built = build_world(out)
    print(" ".join(f"{k}={v}" for k, v in environment(built).items()), "streamlit run apps/explorer.py")
