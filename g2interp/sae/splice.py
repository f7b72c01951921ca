"""SAEs inside the model: splice their reconstructions in at their hook points, and steer latents.

SAELens's ``HookedSAETransformer`` semantics on any TransformerLens ``HookedRootModule`` (a
:class:`~g2interp.model.HookedGemma` in particular), done with temporary forward hooks only, so the
model's modules are never changed:

- :func:`splice` (``model.saes(...)``): inside the ``with`` block, each SAE's reconstruction replaces
  the activation at its ``cfg.hook_name``; with ``use_error_term=True`` the error ``x - x̂`` is added
  back, so the output equals the clean run (up to float rounding) while the latents stay hookable.
  Each spliced SAE adds hook points named as SAELens's (:data:`SAE_SPLICE_HOOKS`) under its hook.
- :class:`Steering` / :func:`steered` (``model.steer(...)``, ``model.generate(steer=...)``): at every
  position, set one latent and change the activation by that latent's share only,
  ``x' = x + (f' - f) W_dec[latent]``; the rest of ``x`` (other latents, the SAE's error) is kept.

Every hook is attached inside a ``try``/``finally``, so nothing stays attached after the block,
whatever is raised in it.
"""

from __future__ import annotations

import difflib
import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from jaxtyping import Bool
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from g2interp.sae.constants import SAE_SPLICE_HOOKS
from g2interp.sae.sae import JumpReLUSAE

SteerMode = Literal["clamp", "add", "scale"]
STEER_MODES: tuple[str, ...] = ("clamp", "add", "scale")
#: An SAE read at its ``cfg.hook_name``, or ``(hook_name, sae)`` to read it at another hook.
SAEAt = JumpReLUSAE | tuple[str, JumpReLUSAE]
HookFn = Callable[..., Any]


class HookedModel(Protocol):
    """What splicing needs of a model: TransformerLens's ``hook_dict`` and ``hooks()`` context manager."""

    hook_dict: Mapping[str, HookPoint]

    def hooks(self, fwd_hooks: list[tuple[Any, HookFn]] = ...) -> Any: ...


# ---------------------------------------------------------------------------------------- checks
def check_hook_name(model: HookedModel, hook_name: str, what: str = "the SAE") -> str:
    """``hook_name`` if it is a hook of ``model``; else a ValueError listing a few valid names."""
    if not hook_name:
        raise ValueError(f"{what} has no cfg.hook_name: set it, or pass (hook_name, sae)")
    names = list(model.hook_dict)
    if hook_name not in model.hook_dict:
        close = difflib.get_close_matches(hook_name, names, n=5, cutoff=0.5)
        hint = f"closest valid names: {close}" if close else f"valid names look like {names[:6]}"
        raise ValueError(
            f"{what} reads {hook_name!r}, which is not a hook of this model; {hint} "
            f"(model.hook_names lists all {len(names)})"
        )
    return hook_name


def flatten_positions(act: Tensor, sae: JumpReLUSAE, hook_name: str) -> Tensor:
    """The activation as [B, Q, d_in] (heads of ``attn.hook_z`` flattened), in a dtype that holds both
    the model's and the SAE's values; a ValueError naming both widths if they differ."""
    width = math.prod(act.shape[2:]) if act.dim() >= 3 else None
    if width != sae.cfg.d_in:
        raise ValueError(
            f"{hook_name} gives activations of shape {tuple(act.shape)} (width {width} per position); "
            f"the SAE reads {sae.cfg.d_in} (cfg.d_in)"
        )
    dtype = torch.promote_types(act.dtype, sae.W_enc.dtype)
    return act.reshape(*act.shape[:2], width).to(dtype)


# ---------------------------------------------------------------------------------------- splicing
class SplicedSAE(nn.Module):
    """One SAE spliced in at a hook point: the activation there becomes the SAE's reconstruction.

    Hook points, named ``<hook_name>.<point>`` as SAELens names them (all [B, Q, ...], positions first):
    ``hook_sae_input`` [B, Q, d_in] the activation read (hook_z heads flattened),
    ``hook_sae_acts_pre`` [B, Q, d_sae] encoder pre-activations,
    ``hook_sae_acts_post`` [B, Q, d_sae] latent activations,
    ``hook_sae_recons`` [B, Q, d_in] the reconstruction from those latents,
    ``hook_sae_error`` [B, Q, d_in] input minus the reconstruction of the unmodified latents (fires only
    with ``use_error_term``), and ``hook_sae_output`` [B, Q, d_in] what replaces the activation.
    A hook on them may change the values: the output follows (the error stays that of the clean input,
    as in SAELens, so an edit of the latents shows in the output).
    """

    def __init__(
        self,
        sae: JumpReLUSAE,
        hook_name: str,
        *,
        use_error_term: bool = False,
        positions: Bool[Tensor, "batch pos"] | None = None,
    ):
        super().__init__()
        self.sae = sae
        self.hook_name = hook_name
        self.use_error_term = use_error_term
        self.positions = positions
        for point in SAE_SPLICE_HOOKS:
            hook_point = HookPoint()
            hook_point.name = f"{hook_name}.{point}"
            setattr(self, point, hook_point)

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Full name -> hook point, for the six points above."""
        return {f"{self.hook_name}.{point}": getattr(self, point) for point in SAE_SPLICE_HOOKS}

    def _intervened(self) -> bool:
        """Whether a hook may have changed the latents (then the error needs a clean recomputation)."""
        points = (self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_acts_post, self.hook_sae_recons)
        return any(p._forward_hooks for p in points)

    def forward(self, act: Tensor) -> Tensor:
        """The activation that replaces ``act`` (same shape and dtype)."""
        sae = self.sae
        x_BQD = flatten_positions(act, sae, self.hook_name)
        keep_BQ1 = None
        if self.positions is not None:
            if tuple(self.positions.shape) != tuple(act.shape[:2]):
                raise ValueError(
                    f"positions has shape {tuple(self.positions.shape)}; the activations at "
                    f"{self.hook_name} have [batch, pos] = {tuple(act.shape[:2])}"
                )
            keep_BQ1 = self.positions.to(act.device).bool()[:, :, None]
        x_in_BQD = self.hook_sae_input(x_BQD)
        pre_BQF = self.hook_sae_acts_pre(sae.pre_activations(x_in_BQD))
        f_BQF = self.hook_sae_acts_post(sae.activation(pre_BQF))
        out_BQD = self.hook_sae_recons(sae.decode(f_BQF))
        if self.use_error_term:
            with torch.no_grad():  # as SAELens: the error is a constant; gradients flow through the SAE
                clean_BQD = sae.decode(sae.encode(x_BQD)) if self._intervened() else out_BQD
                error_BQD = x_BQD - clean_BQD
                if keep_BQ1 is not None:
                    error_BQD = torch.where(keep_BQ1, error_BQD, torch.zeros_like(error_BQD))
                error_BQD = self.hook_sae_error(error_BQD)
            out_BQD = out_BQD + error_BQD
        if keep_BQ1 is not None:  # positions left out keep their activation
            out_BQD = torch.where(keep_BQ1, out_BQD, x_BQD.to(out_BQD.dtype))
        out_BQD = self.hook_sae_output(out_BQD)
        return out_BQD.to(act.dtype).reshape(act.shape)

    def replace(self, act: Tensor, hook: HookPoint) -> Tensor:
        """The TransformerLens hook function: ``act`` at ``hook`` -> its replacement."""
        return self(act)


class Splice:
    """The SAEs spliced into a model inside ``with splice(...)`` / ``with model.saes(...)``."""

    def __init__(self, model: HookedModel, spliced: Sequence[SplicedSAE]):
        self.model = model
        self.spliced = tuple(spliced)
        self._levels = itertools.count(1)

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """The spliced SAEs' hook points (``<hook>.hook_sae_*``), full name -> hook point."""
        return {name: hp for s in self.spliced for name, hp in s.hook_dict.items()}

    @contextmanager
    def hooks(self, fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = ()) -> Iterator[Splice]:
        """Temporary forward hooks on the model's hook names and the SAEs' ``<hook>.hook_sae_*`` names
        (a name, or a filter on names, as TransformerLens takes); all removed on exit."""
        model_hooks: list[tuple[Any, HookFn]] = []
        inner: list[tuple[HookPoint, HookFn]] = []
        ours = self.hook_dict
        for name, fn in fwd_hooks:
            if callable(name):
                model_hooks.append((name, fn))
                inner.extend((hp, fn) for n, hp in ours.items() if name(n))
            elif name in ours:
                inner.append((ours[name], fn))
            else:
                model_hooks.append((check_hook_name(self.model, name, "a hook"), fn))
        level = next(self._levels)
        try:
            for hp, fn in inner:
                hp.add_hook(fn, level=level)
            with self.model.hooks(fwd_hooks=model_hooks):
                yield self
        finally:
            for hp, _ in inner:
                hp.remove_hooks("fwd", level=level)


def spliced_saes(
    model: HookedModel,
    saes: SAEAt | Sequence[SAEAt],
    *,
    use_error_term: bool = False,
    positions: Bool[Tensor, "batch pos"] | None = None,
) -> list[SplicedSAE]:
    """Check and wrap the SAEs to splice: each hook a hook of ``model``, one SAE per hook."""
    one = isinstance(saes, JumpReLUSAE) or (
        isinstance(saes, tuple) and len(saes) == 2 and isinstance(saes[0], str)
    )
    items = [saes] if one else list(saes)
    out: list[SplicedSAE] = []
    for item in items:
        hook_name, sae = item if isinstance(item, tuple) else (item.cfg.hook_name, item)
        if not isinstance(sae, JumpReLUSAE):
            raise TypeError(f"expected a JumpReLUSAE or (hook_name, JumpReLUSAE), got {type(item).__name__}")
        check_hook_name(model, hook_name)
        if any(s.hook_name == hook_name for s in out):
            raise ValueError(f"two SAEs are spliced at {hook_name!r}; splice one SAE per hook")
        out.append(SplicedSAE(sae, hook_name, use_error_term=use_error_term, positions=positions))
    return out


@contextmanager
def splice(
    model: HookedModel,
    saes: SAEAt | Sequence[SAEAt],
    *,
    use_error_term: bool = False,
    positions: Bool[Tensor, "batch pos"] | None = None,
) -> Iterator[Splice]:
    """Inside the block, each SAE's reconstruction replaces the activation at its hook.

    ``saes``: SAEs read at their ``cfg.hook_name``, or ``(hook_name, sae)`` pairs. ``use_error_term``
    adds ``x - x̂`` back (the clean output, up to rounding, with the latents still hookable).
    ``positions`` [B, Q] splices only where True (e.g. ``tokens != bos``); elsewhere activations pass
    unchanged. The block gets a :class:`Splice`, whose ``hooks()`` also reaches the SAEs' hook points.
    Everything is detached on exit, also when the block raises.
    """
    spliced = spliced_saes(model, saes, use_error_term=use_error_term, positions=positions)
    with model.hooks(fwd_hooks=[(s.hook_name, s.replace) for s in spliced]):
        yield Splice(model, spliced)


# ---------------------------------------------------------------------------------------- steering
@dataclass(frozen=True)
class Steering:
    """Set one SAE latent at every position, changing the activation by that latent's share only.

    At the SAE's hook, with ``f`` the latent's activation on ``x`` and ``f'`` its new value:
    ``x' = x + (f' - f) W_dec[latent]`` (divided by the SAE's ``input_scale``), i.e. the SAE's
    reconstruction with the latent set, plus the SAE's error, so nothing else in ``x`` changes.
    """

    sae: JumpReLUSAE
    """The SAE whose latent is steered; it reads and writes the activation at ``sae.cfg.hook_name``."""
    latent: int
    """Index of the latent, in ``[0, sae.cfg.d_sae)``."""
    value: float
    """``clamp``: the latent's new activation; ``add``: added to it; ``scale``: its multiplier."""
    mode: SteerMode = "clamp"
    """``clamp`` sets ``f' = value`` (``value=0`` ablates the latent), ``add`` sets ``f' = f + value``,
    ``scale`` sets ``f' = f * value``."""

    def __post_init__(self) -> None:
        if not isinstance(self.sae, JumpReLUSAE):
            raise TypeError(f"Steering.sae must be a JumpReLUSAE, got {type(self.sae).__name__}")
        if isinstance(self.latent, bool) or not isinstance(self.latent, numbers.Integral):
            raise TypeError(f"Steering.latent must be an int index, got {self.latent!r}")
        d_sae = self.sae.cfg.d_sae
        if not 0 <= self.latent < d_sae:
            raise ValueError(
                f"latent {self.latent} is out of range for the SAE at {self.sae.cfg.hook_name!r}: "
                f"valid latents are [0, {d_sae}) (d_sae={d_sae})"
            )
        if isinstance(self.value, bool) or not isinstance(self.value, numbers.Real):
            raise TypeError(f"Steering.value must be a real number, got {self.value!r}")
        if not math.isfinite(self.value):
            raise ValueError(f"Steering.value must be finite, got {self.value!r}")
        if self.mode not in STEER_MODES:
            raise ValueError(f"Steering.mode must be one of {STEER_MODES}, got {self.mode!r}")
        object.__setattr__(self, "latent", int(self.latent))
        object.__setattr__(self, "value", float(self.value))

    @classmethod
    def of(cls, spec: SteerSpec) -> Steering:
        """A Steering from itself, ``(sae, latent, value)`` (clamp) or ``(sae, latent, (mode, value))``."""
        if isinstance(spec, Steering):
            return spec
        if not isinstance(spec, tuple) or len(spec) != 3:
            raise TypeError(
                "a steering is a Steering, (sae, latent, value) or (sae, latent, (mode, value)); "
                f"got {spec!r}"
            )
        sae, latent, value = spec
        if isinstance(value, tuple):
            if len(value) != 2:
                raise TypeError(f"expected (mode, value) with mode in {STEER_MODES}, got {value!r}")
            mode, value = value
            return cls(sae, latent, value, mode)
        return cls(sae, latent, value)


#: A :class:`Steering`, ``(sae, latent, value)`` (clamp), or ``(sae, latent, (mode, value))``.
SteerSpec = Steering | tuple[JumpReLUSAE, int, Any]


class LatentSteer:
    """The hook that applies the steerings of one SAE (all its latents read from the same ``x``)."""

    def __init__(self, steerings: Sequence[Steering]):
        sae = steerings[0].sae
        self.sae, self.hook_name = sae, sae.cfg.hook_name
        device = sae.W_enc.device
        self.latents_N = torch.tensor([s.latent for s in steerings], dtype=torch.long, device=device)
        self.values_N = torch.tensor([s.value for s in steerings], dtype=sae.W_enc.dtype, device=device)
        modes = [s.mode for s in steerings]
        self.clamp_N = torch.tensor([m == "clamp" for m in modes], device=device)
        self.add_N = torch.tensor([m == "add" for m in modes], device=device)

    def __call__(self, act: Tensor, hook: HookPoint) -> Tensor:
        x_BQD = flatten_positions(act, self.sae, self.hook_name)
        f_BQN = self.sae.encode(x_BQD, self.latents_N)
        scaled_BQN = f_BQN * self.values_N
        target_BQN = torch.where(
            self.clamp_N,
            self.values_N.expand_as(f_BQN),
            torch.where(self.add_N, f_BQN + self.values_N, scaled_BQN),
        )
        delta_BQD = self.sae.decode_latents(target_BQN - f_BQN, self.latents_N)
        return (x_BQD + delta_BQD).to(act.dtype).reshape(act.shape)


def steering_hooks(model: HookedModel, steer: Sequence[SteerSpec]) -> list[tuple[str, LatentSteer]]:
    """Check the steerings against ``model`` and build one forward hook per steered SAE.

    Raises ValueError for a hook that is not the model's or a latent steered twice; an SAE whose
    ``d_in`` differs from its hook's width raises (naming both) at the first forward pass.
    """
    if isinstance(steer, Steering) or (isinstance(steer, tuple) and isinstance(steer[0], JumpReLUSAE)):
        steer = [steer]
    groups: dict[int, list[Steering]] = {}
    for spec in steer:
        s = Steering.of(spec)
        check_hook_name(model, s.sae.cfg.hook_name, "the steered SAE")
        group = groups.setdefault(id(s.sae), [])
        if any(g.latent == s.latent for g in group):
            raise ValueError(f"latent {s.latent} of the SAE at {s.sae.cfg.hook_name!r} is steered twice")
        group.append(s)
    return [(group[0].sae.cfg.hook_name, LatentSteer(group)) for group in groups.values()]


@contextmanager
def steered(model: HookedModel, steer: Sequence[SteerSpec]) -> Iterator[None]:
    """Inside the block, every forward pass of ``model`` runs with the latents steered."""
    with model.hooks(fwd_hooks=steering_hooks(model, steer)):
        yield
