"""``g2interp fit-policy NAME EXAMPLES.jsonl --out HEADS``: a probe head for a custom policy from examples.

Each line of the JSONL holds ``text`` and ``label`` (1 = violates the policy, 0 = allowed; true/false,
yes/no, unsafe/safe also read), and ``prompt`` on every line when the texts are responses. The heads
folder written holds the shipped heads and the new one; score with
``Moderator.load([... , NAME])`` after ``Moderator(model, heads=HEADS)``, or ``g2interp moderate --heads``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="g2interp fit-policy", description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the new policy's name (no dots)")
    parser.add_argument(
        "examples", help="JSONL with 'text' and 'label' (and 'prompt' for responses) per line"
    )
    parser.add_argument("--out", required=True, help="heads folder to write (shipped heads + the new one)")
    parser.add_argument(
        "--heads", default=None, help="start from this heads folder instead of the shipped one"
    )
    parser.add_argument("--replace", action="store_true", help="overwrite a head of the same name")
    parser.add_argument("--seed", type=int, default=0, help="seed of the 75/25 fit/calibration split")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Fit, save, print the held-out AP as JSON; exit 2 on bad input."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        from g2interp.moderation.moderator import Moderator
        from g2interp.moderation.policy_fit import read_examples

        texts, labels, prompts = read_examples(args.examples)
        moderator = Moderator.load(heads=args.heads)
        fit = moderator.fit_policy(
            args.name, texts, labels, prompts=prompts, replace=args.replace, seed=args.seed
        )
        moderator.save_heads(args.out)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"g2interp fit-policy: error: {exc}", file=sys.stderr)
        return 2
    cfg = fit.head.cfg
    out = {"policy": args.name, "heads": args.out, "val_ap": fit.val_ap, "n_train": fit.n_train,
           "n_val": fit.n_val, "threshold": cfg.threshold}  # fmt: skip
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
