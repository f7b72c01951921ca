"""The ``g2interp`` command: one entry point, a subcommand per stage."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from g2interp.constants import EMBEDDED_MODEL


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        nargs="?",
        default=EMBEDDED_MODEL,
        help=f"model: {EMBEDDED_MODEL!r} (default), a HF folder, a .gguf file or a cached hub id",
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--dtype", default=None, help="float32, bfloat16 or float16 (default: bf16 on cuda, fp32 on cpu)"
    )


def _load(args):
    from g2interp.loading import load_model

    return load_model(args.source, device=args.device, dtype=args.dtype)


def cmd_info(args: argparse.Namespace) -> int:
    model = _load(args)
    cfg = model.cfg
    info = {
        "config": cfg.to_dict(),
        "n_params": cfg.n_params,
        "device": str(model.device),
        "dtype": str(model.dtype).replace("torch.", ""),
        "n_hooks": len(model.hook_names),
        "hook_names": model.hook_names
        if args.all_hooks
        else [n for n in model.hook_names if not n.startswith("blocks.")]
        + [n for n in model.hook_names if n.startswith("blocks.0.")],
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(
        f"{cfg.architecture}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads / {cfg.n_kv_heads} kv, "
        f"d_head {cfg.d_head}, d_mlp {cfg.d_mlp}, vocab {cfg.vocab_size}"
    )
    print(f"parameters: {cfg.n_params:,}  device: {info['device']}  dtype: {info['dtype']}")
    types = "".join("S" if t.value == "sliding_attention" else "G" for t in cfg.layer_types)
    print(f"layer types (S sliding {cfg.sliding_window}, G global): {types}")
    print(
        f"query_pre_attn_scalar {cfg.query_pre_attn_scalar}, soft-caps attn {cfg.attn_logit_softcap} "
        f"final {cfg.final_logit_softcap}, rope global {cfg.rope_theta_global:g} local {cfg.rope_theta_local:g}, "
        f"qk-norm {cfg.use_qk_norm}"
    )
    label = (
        "all hooks"
        if args.all_hooks
        else "hooks (blocks.0 shown; every block has the same; --all-hooks lists all)"
    )
    print(f"{len(model.hook_names)} {label}:")
    for name in info["hook_names"]:
        print(f"  {name}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    model = _load(args)
    out = model.generate(
        args.text, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    print(args.text + out.texts[0])
    return 0


# Stages with their own config dataclass and parser: `g2interp NAME ...` hands the rest to MODULE.main(argv).
DELEGATED = {
    "capture": (
        "g2interp.activations.cli",
        "capture activations of a corpus into a sharded, resumable store",
    ),
    "train-sae": (
        "g2interp.sae.cli",
        "train and evaluate JumpReLU SAEs from an activation store (or on the fly)",
    ),
    "moderate": ("g2interp.moderation.cli", "harm probabilities of a prompt (and response) as JSON"),
    "fit-policy": (
        "g2interp.moderation.fit_cli",
        "train a probe head for a custom policy from labelled JSONL",
    ),
    "dashboards": ("g2interp.dashboards.cli", "precompute latent dashboards of an SAE for the explorer"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="g2interp", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="config, parameter count and hook names of a model")
    _add_model_args(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    info.add_argument("--all-hooks", action="store_true", help="list every hook name")
    info.set_defaults(func=cmd_info)

    gen = sub.add_parser("generate", help="continue a text")
    gen.add_argument("text", help="the prompt")
    _add_model_args(gen)
    gen.add_argument("--max-new-tokens", type=int, default=40)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.set_defaults(func=cmd_generate)

    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=f"{help_text} (g2interp {name} --help)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        return importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        print(f"g2interp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
