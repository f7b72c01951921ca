"""Named training recipes: the settings of :class:`SAETrainingConfig` that a kind of run needs.

* ``gemma-scope``: Gemma Scope's JumpReLU recipe (arXiv 2408.05147) as :class:`SAETrainingConfig`'s
  defaults hold it: Adam (0, 0.999), lr 7e-5 with a 1,000-step cosine warm-up, λ 6e-4 warmed up over
  10,000 steps, 4,096 tokens a step, thresholds at 0.001. Meant for billions of tokens.
* ``short-run``: what reaches a useful SAE in hundreds of steps on a CPU (experiments/README.md): 1,024
  tokens a step, lr 5e-4 with 20 warm-up steps, Gemma Scope 2's quadratic L0 penalty on the batch's
  mean L0 towards a target of 40 (λ 0.01; thresholds trained directly and started at the target), the
  dead-latent loss (AuxK and threshold descent, weight 1/32) on latents silent for 25 steps, ``b_dec``
  started at the data mean, replayed for 3 epochs. With ``architecture="batchtopk"`` or
  ``"matryoshka"`` the target is k.

``recipe("short-run").config(d_in=640, total_tokens=786_432, hook_name=...)`` gives the frozen config;
keyword arguments override any setting of the recipe.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from g2interp.sae.training import SAETrainingConfig


@dataclass(frozen=True)
class Recipe:
    """A named set of training settings."""

    name: str
    """How the CLI and the configs name it (``--recipe``)."""
    description: str
    """One line: what it is for."""
    training: Mapping[str, Any] = field(default_factory=dict)
    """:class:`SAETrainingConfig` fields it sets (the others keep the config's defaults)."""
    d_sae: int = 16_384
    """Latents, unless the run says otherwise."""
    epochs: int = 1
    """Passes over the source's training rows when the run names no ``total_tokens``."""

    def config(
        self, *, d_in: int, total_tokens: int, d_sae: int | None = None, **overrides: Any
    ) -> SAETrainingConfig:
        """The recipe's :class:`SAETrainingConfig` for one SAE (``overrides`` win over the recipe)."""
        fields = {**self.training, "d_in": d_in, "total_tokens": total_tokens, "d_sae": d_sae or self.d_sae}
        return SAETrainingConfig(**{**fields, **overrides})


GEMMA_SCOPE = Recipe(  # SAETrainingConfig's defaults and 16,384 latents
    "gemma-scope", "Gemma Scope's JumpReLU recipe: fixed λ after warm-up, for billions of tokens"
)
SHORT_RUN = Recipe(
    "short-run",
    "hundreds of steps on a CPU: quadratic L0 penalty towards the target, dead-latent loss",
    {
        "batch_size": 1024,
        "lr": 5e-4,
        "lr_warmup_steps": 20,
        "l0_coefficient": 1e-2,
        "l0_warmup_steps": 0,
        "target_l0": 40.0,
        "l0_target_per": "batch",
        "aux_coefficient": 1 / 32,
        "b_dec_init": "mean",
        "n_norm_batches": 4,
        "dead_window_steps": 25,
        "checkpoint_every": 100,
        "log_every": 50,
    },
    d_sae=4096,
    epochs=3,
)
#: Every recipe by name.
RECIPES: dict[str, Recipe] = {r.name: r for r in (GEMMA_SCOPE, SHORT_RUN)}


def recipe(name: str | Recipe) -> Recipe:
    """The recipe of that name (a :class:`Recipe` passes through); KeyError naming the known ones."""
    if isinstance(name, Recipe):
        return name
    if name not in RECIPES:
        raise KeyError(f"no recipe {name!r}; the recipes are {sorted(RECIPES)}")
    return RECIPES[name]
