"""Where activations come from: one interface, two implementations.

:class:`ActivationSource` is what the SAE trainer, the evaluations and the dashboards read: the packed
contexts with their train/eval split, and rows of one or several hooks, either shuffled in resumable
batches (:meth:`~ActivationSource.batches`) or in context order (:meth:`~ActivationSource.iter_rows`).
Its units are the spans of :meth:`PackedContexts.shard_spans`, so that

* :class:`~g2interp.activations.store.ActivationStore` (a capture on disk) reads them from its shards, and
* :class:`OnTheFlySource` runs the model on them with the capture's own loop,

and for the same model, packing and seed both yield the same batches, bit for bit (float32 stores).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from g2interp.activations.batches import ActivationBatches, Rows
from g2interp.activations.capture import hook_shapes, iter_captured_rows, model_fingerprint
from g2interp.activations.config import ContextsConfig
from g2interp.activations.corpus import PackedContexts, corpus_fingerprint, prepare_contexts
from g2interp.activations.manifest import StoreError, activations_fingerprint
from g2interp.model.gemma import HookedGemma

if TYPE_CHECKING:
    from g2interp.sae.sae import JumpReLUSAE

logger = logging.getLogger(__name__)


class ActivationSource(ABC):
    """Rows of hooks over packed contexts split into train and eval (see the module docstring).

    Attributes every source sets: ``name`` (how errors name it: ``store runs/s``), ``hooks`` (those it can
    give rows of), ``contexts_config`` (the packing that made its contexts), ``fingerprint`` (sha256 of
    model, corpus and packing: equal for a store and an on-the-fly source of the same), ``model_source``
    (the model, as ``load_model`` takes it) and ``model_fingerprint``.
    """

    name: str
    hooks: list[str]
    contexts_config: ContextsConfig
    fingerprint: str
    model_source: str
    model_fingerprint: str

    @abstractmethod
    def hook_shape(self, hook: str) -> tuple[int, ...]:
        """Per-token shape at ``hook`` (rows are flattened to its product)."""

    @abstractmethod
    def contexts(self) -> PackedContexts:
        """The packed contexts the rows index, the last ``n_eval`` held out."""

    @abstractmethod
    def unit_rows(self, split: str) -> dict[int, int]:
        """Rows per unit of ``split`` that can be read now (unit ``i`` is shard span ``i``)."""

    @abstractmethod
    def load_units(self, hooks: Sequence[str], units: Sequence[int]) -> Rows:
        """Rows of these units for these hooks, concatenated in the order given, aligned across hooks."""

    # -------------------------------------------------------------------------------- shared
    def d(self, hook: str) -> int:
        """Width of a row of ``hook``."""
        return math.prod(self.hook_shape(hook))

    def check_hooks(self, hooks: str | Sequence[str]) -> list[str]:
        """The hooks as a list; a hook this source lacks raises KeyError naming the source and the valid ones."""
        names = [hooks] if isinstance(hooks, str) else list(hooks)
        if not names:
            raise ValueError("name at least one hook")
        missing = [h for h in names if h not in self.hooks]
        if missing:
            raise KeyError(f"{self.name} has no hook {missing[0]!r}; it holds {self.hooks}")
        return names

    def check_sae(self, sae: JumpReLUSAE) -> str:
        """The hook the SAE reads, checked to be one of this source's, of the SAE's width."""
        hook = sae.cfg.hook_name
        if not hook:
            raise ValueError("the SAE names no hook (cfg.hook_name is empty): cannot tell what it reads")
        self.check_hooks(hook)
        if self.d(hook) != sae.cfg.d_in:
            raise ValueError(
                f"the SAE reads {sae.cfg.d_in} features; {hook} of {self.name} is {self.d(hook)} wide"
            )
        out = sae.cfg.hook_name_out
        if out:  # a transcoder: its target is evaluated too
            self.check_hooks(out)
            if self.d(out) != sae.cfg.d_out:
                raise ValueError(
                    f"the transcoder writes {sae.cfg.d_out} features; {out} of {self.name} is {self.d(out)} wide"
                )
        return hook

    def check_model(self, model: HookedGemma, requested: str = "") -> None:
        """Refuse a model other than the one the activations come from (by fingerprint)."""
        if model_fingerprint(model) != self.model_fingerprint:
            asked = f" ({requested!r})" if requested else ""
            raise ValueError(
                f"{self.name} was captured from model {self.model_source!r}; the model given{asked} is "
                f"another one (fingerprints differ). Pass the store's model, or capture again."
            )

    def check_eval_contexts(self, needed: int) -> None:
        """Refuse an evaluation that needs more held-out contexts than the source has."""
        have = self.contexts().n_eval
        if have < needed:
            raise ValueError(
                f"{self.name} holds {have} held-out contexts; the evaluation needs at least {needed} "
                f"(capture with --eval-contexts {needed} or more, or ask for fewer)"
            )

    def n_rows(self, split: str = "train") -> int:
        return sum(self.unit_rows(split).values())

    def batches(
        self,
        hooks: str | Sequence[str],
        batch_size: int,
        *,
        split: str = "train",
        rank: int = 0,
        world_size: int = 1,
        prefetch: bool | None = None,
        **kwargs: Any,
    ) -> ActivationBatches:
        """Shuffled batches of one hook (``Tensor[batch, d]``) or several aligned (a dict) from ``split``.

        ``rank``/``world_size`` give each data-parallel rank the units ``rank::world_size`` (its own
        contexts) and an independent shuffle of them. Other arguments: :class:`ActivationBatches`
        (``seed``, ``epochs``, ``start``, ``drop_last``, ``buffer_rows``, ``dtype``, ``device``, ``with_index``).
        """
        names = self.check_hooks(hooks)
        units = sorted(self.unit_rows(split).items())[rank::world_size]  # a bad split raises in split_range
        if not units:
            raise ValueError(f"{self.name} has no {split} rows to read (rank {rank} of {world_size})")
        ids = [u for u, _ in units]
        if world_size > 1:
            kwargs["seed"] = kwargs.get("seed", 0) * 1_000_003 + rank  # each rank its own order
        return ActivationBatches(
            [r for _, r in units],
            lambda picked: self.load_units(names, [ids[i] for i in picked]),
            hooks if isinstance(hooks, str) else names,
            batch_size=batch_size,
            prefetch=self.prefetch_default if prefetch is None else prefetch,
            **kwargs,
        )

    def iter_rows(self, hooks: str | Sequence[str], split: str = "eval") -> Iterator[Rows]:
        """Rows of ``split`` unit by unit, in context order (for evaluations and dashboards)."""
        names = self.check_hooks(hooks)
        for unit in sorted(self.unit_rows(split)):
            yield self.load_units(names, [unit])

    #: Load the next window on a thread while this one is consumed (off where loading runs the model).
    prefetch_default = True

    def provenance(self, hook: str) -> dict[str, Any]:
        """What an SAE trained on ``hook`` of this source records, to find its model and contexts again."""
        contexts = self.contexts()
        return {
            "fingerprint": self.fingerprint,
            "hook": hook,
            "model": self.model_source,
            "model_fingerprint": self.model_fingerprint,
            "contexts": {
                **self.contexts_config.contexts_identity(),
                "data": str(Path(self.contexts_config.data).resolve()),
            },
            "n_train_contexts": contexts.n_train,
            "n_eval_contexts": contexts.n_eval,
        }


class OnTheFlySource(ActivationSource):
    """Activations computed when read: the model runs on each unit's contexts, as a capture would."""

    prefetch_default = False

    def __init__(
        self,
        model: HookedGemma,
        cfg: ContextsConfig,
        *,
        model_source: str = "",
        batch_contexts: int = 8,
        contexts: PackedContexts | None = None,
    ):
        if model.tokenizer is None:
            raise ValueError("the model has no tokenizer; an on-the-fly source packs the corpus with it")
        if batch_contexts < 1:
            raise ValueError(f"batch_contexts must be positive, got {batch_contexts}")
        self.model = model
        self.contexts_config = self.cfg = cfg.contexts_config()
        self.batch_contexts = batch_contexts
        self.name = f"on-the-fly capture of {self.cfg.data}"
        self.hooks = list(model.hook_names)
        self.model_source = model_source or str(model.cfg.architecture)
        self.model_fingerprint = model_fingerprint(model)
        corpus = corpus_fingerprint(self.cfg.data, self.cfg.text_field)
        self.fingerprint = activations_fingerprint(
            self.cfg.contexts_identity(), self.model_fingerprint, corpus
        )
        self._contexts = prepare_contexts(model.tokenizer, self.cfg) if contexts is None else contexts
        self._spans = self._contexts.shard_spans(self.cfg.contexts_per_shard)
        self._shapes: dict[str, tuple[int, ...]] = {}

    def check_hooks(self, hooks: str | Sequence[str]) -> list[str]:
        names = [hooks] if isinstance(hooks, str) else list(hooks)
        self.model.resolve_hook_names(names)  # KeyError with the closest valid names
        return super().check_hooks(names)

    def hook_shape(self, hook: str) -> tuple[int, ...]:
        if hook not in self._shapes:
            self._shapes.update(hook_shapes(self.model, self.check_hooks(hook)))
        return self._shapes[hook]

    def contexts(self) -> PackedContexts:
        return self._contexts

    def unit_rows(self, split: str) -> dict[int, int]:
        r = self._contexts.split_range(split)
        return {
            i: int(self._contexts.keep_mask(s, e, self.cfg.exclude).sum())
            for i, (s, e) in enumerate(self._spans)
            if r.start <= s < r.stop
        }

    @torch.no_grad()
    def load_units(self, hooks: Sequence[str], units: Sequence[int]) -> Rows:
        parts = []
        for unit in units:
            start, end = self._spans[unit]
            for rows in iter_captured_rows(
                self.model,
                self._contexts,
                hooks,
                start=start,
                end=end,
                batch_contexts=self.batch_contexts,
                exclude=self.cfg.exclude,
            ):
                parts.append(
                    rows._replace(activations={h: a.float().cpu() for h, a in rows.activations.items()})
                )
        if not parts:
            raise StoreError(f"{self.name}: units {list(units)} hold no contexts")
        return Rows.cat(parts)
