"""Config dataclasses: their validation, their command-line flags, and the shell every stage command runs in.

Each stage (``capture``, ``train-sae``, ``dashboards``) is configured by frozen dataclasses with a
docstring under every field. :func:`add_config_arguments` turns such a class into one flag per field
(``--context-length`` for ``context_length``), typed from the annotation, with the docstring as help;
:func:`config_from_args` builds the validated config back. :func:`stage_main` is the rest of every
stage's ``main``: logging, thread count, usage errors as exit status 2 with a one-line message, and the
result printed as JSON.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from itertools import pairwise
from typing import Any, TypeVar

C = TypeVar("C")
logger = logging.getLogger("g2interp.cli")
EXIT_USAGE = 2
EXIT_FAILED = 1
_SCALARS = {"int": int, "float": float, "str": str}


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (and of the dataclasses it extends)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
    if missing:
        raise TypeError(f"{cls.__name__} fields without a docstring: {missing}")
    return docs


def require_ints(cfg: Any, *names: str, minimum: int = 1) -> None:
    """Each field an int (not a bool) of at least ``minimum``, else ValueError naming it."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            kind = "a positive" if minimum == 1 else "a non-negative" if minimum == 0 else f"an >= {minimum}"
            raise ValueError(f"{name} must be {kind} integer, got {value!r}")


def require_strings(cfg: Any, *names: str) -> None:
    """Each field a non-empty string, else ValueError naming it."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def require_positive(cfg: Any, *names: str, allow_zero: bool = False) -> None:
    """Each field a finite number above 0 (or at least 0), else ValueError naming it."""
    for name in names:
        value = getattr(cfg, name)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise ValueError(
                f"{name} must be {'>= 0' if allow_zero else 'positive'} and finite, got {value!r}"
            )


def flag(name: str) -> str:
    """``context_length`` -> ``--context-length``."""
    return "--" + name.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Sequence[str] = (),
    choices: Mapping[str, Sequence[Any]] | None = None,
    overrides_only: bool = False,
) -> list[str]:
    """One flag per field of dataclass ``cls`` (except ``skip``); returns the field names added.

    Types come from the annotations: ``bool`` -> ``--x/--no-x``, ``tuple[str, ...]`` -> one or more
    values, ``tuple[float, float]`` -> two numbers, ``int``/``float``/``str`` (optionally ``| None``).
    ``overrides_only``: no field is required and a flag not given is absent from the namespace (for
    settings whose defaults come from elsewhere, e.g. a named recipe).
    """
    docs = field_docs(cls)
    choices = dict(choices or {})
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        kwargs: dict[str, Any] = {"dest": f.name, "help": docs[f.name].replace("%", "%%")}
        if overrides_only:
            kwargs["default"] = argparse.SUPPRESS
        elif required:
            kwargs["required"] = True
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kwargs["default"] = list(default) if isinstance(default, tuple) else default
        kind = str(f.type).replace(" ", "")
        base = kind.removesuffix("|None")
        if base == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif base.startswith("tuple[") and base.endswith(",...]"):
            kwargs.update(nargs="+" if required else "*", type=_SCALARS[base[6:-5]])
            if required:  # --hook a --hook b as well as --hook a b
                kwargs["action"] = "extend"
        elif base.startswith("tuple["):
            parts = base[6:-1].split(",")
            kwargs.update(nargs=len(parts), type=_SCALARS[parts[0]], metavar=tuple("ABCDEFGH"[: len(parts)]))
        elif base in _SCALARS:
            kwargs["type"] = _SCALARS[base]
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag for annotation {f.type!r}")
        if f.name in choices:
            kwargs["choices"] = choices[f.name]
        parser.add_argument(flag(f.name), **kwargs)
        added.append(f.name)
    return added


def config_values(cls: type, args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``cls`` that ``args`` holds, tuples for list values."""
    values = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            value = values[f.name]
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out


def config_from_args(cls: type[C], args: argparse.Namespace | Mapping[str, Any], **fixed: Any) -> C:
    """``cls(**fields in args, **fixed)``: a validated config (its ``__post_init__`` raises ValueError)."""
    return cls(**{**config_values(cls, args), **fixed})


def stage_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a stage command (defaults shown in ``--help``)."""
    return argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def add_process_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--log-level``: how the process runs, not what it computes."""
    group = parser.add_argument_group("process")
    group.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)"
    )
    group.add_argument("--log-level", default="INFO", help="logging level (DEBUG, INFO, WARNING)")


#: Errors a stage reports as a usage or data problem (exit status 2): bad flags, files, stores, hooks.
USAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileNotFoundError, TypeError)


def stage_main(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], Mapping[str, Any] | None],
    argv: Sequence[str] | None = None,
    *,
    usage: tuple[type[BaseException], ...] = (),
    failures: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv``, set up logging and threads, ``run(args)`` and print its result as JSON.

    Returns 0; 1 (``prog: failed: message`` logged) for ``failures``, errors worth retrying such as a
    failed disk write (a missing file is never one); 2 (``prog: error: message``) for
    :data:`USAGE_ERRORS` and ``usage``. Only rank 0 of a torchrun group logs below WARNING and prints.
    """
    import torch

    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    level = getattr(logging, str(args.log_level).upper(), logging.INFO) if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = run(args)
    except BaseException as exc:
        if isinstance(exc, failures) and not isinstance(exc, FileNotFoundError):
            logger.error("%s: failed: %s", parser.prog, exc)
            return EXIT_FAILED
        if isinstance(exc, (*USAGE_ERRORS, *usage)):
            logger.error(
                "%s: error: %s", parser.prog, exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            )
            return EXIT_USAGE
        raise
    if result is not None and rank == 0:
        print(json.dumps(dict(result), indent=2, default=str))
    return 0
