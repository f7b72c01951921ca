"""``g2interp moderate "text" [--response TEXT]``: per-policy probabilities and the verdict, as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="g2interp moderate", description="Score a prompt (or a response to it) against harm policies."
    )
    parser.add_argument("text", help="the user prompt (classified itself unless --response is given)")
    parser.add_argument("--response", default=None, help="a chatbot response to TEXT: classify the response")
    parser.add_argument(
        "--checkpoint",
        default=None,
        help="a local ShieldGemma / Gemma folder or .gguf, scored generatively (default: the embedded model "
        "with its probe heads)",
    )
    parser.add_argument(
        "--policy",
        action="append",
        default=None,
        metavar="NAME",
        help="a harm type to score (repeatable; default all four; --custom-policy adds to them)",
    )
    parser.add_argument(
        "--custom-policy",
        action="append",
        default=[],
        metavar="NAME=DEFINITION",
        help="a policy of your own, e.g. spam='\"No Spam\": The prompt shall not advertise.' (repeatable)",
    )
    parser.add_argument(
        "--heads",
        default=None,
        help="a heads folder (e.g. written by g2interp fit-policy) instead of the shipped one",
    )
    parser.add_argument("--threshold", type=float, default=None, help="one threshold for every policy")
    parser.add_argument(
        "--max-text-tokens", type=int, default=1024, help="longer texts are cut (first and last halves kept)"
    )
    parser.add_argument("--overflow", choices=["truncate", "error"], default="truncate")
    parser.add_argument("--device", default=None, help="cpu or cuda")
    return parser


def run(args: argparse.Namespace) -> dict:
    from g2interp.moderation.config import ModeratorConfig
    from g2interp.moderation.moderator import Moderator
    from g2interp.moderation.policies import HarmType, Policy

    policies: list = list(args.policy or [h.value for h in HarmType])  # custom policies add to these
    for spec in args.custom_policy:
        name, sep, definition = spec.partition("=")
        if not sep:
            raise ValueError(f"--custom-policy takes NAME=DEFINITION, got {spec!r}")
        policies.append(Policy(name, definition))
    config = ModeratorConfig(max_text_tokens=args.max_text_tokens, overflow=args.overflow)
    if args.checkpoint:
        moderator = Moderator.from_checkpoint(args.checkpoint, policies, config=config, device=args.device)
    else:
        moderator = Moderator.load(policies, config=config, device=args.device, heads=args.heads)
    if args.response is None:
        verdict = moderator.check_prompt(args.text, args.threshold)
    else:
        verdict = moderator.check_response(args.text, args.response, args.threshold)
    return {
        "classified": "prompt" if args.response is None else "response",
        "allowed": verdict.allowed,
        "tripped": list(verdict.tripped),
        "scores": verdict.scores,
        "thresholds": verdict.thresholds,
        "truncated": verdict.truncated,
        "scorer": "probe" if moderator.heads is not None else "generative",
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Print the verdict as JSON; exit 0 (allowed), 1 (blocked) or 2 (bad input)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"g2interp moderate: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0 if result["allowed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
