"""SAEs inside the model: splice their reconstructions in at their hook points, and steer latents.

SAELens's ``HookedSAETransformer`` semantics on any TransformerLens ``HookedRootModule`` (a
:class:`~g2interp.model.HookedGemma` in particular), done with temporary forward hooks only, so the
model's modules are never changed:

- :func:`splice` (``model.saes(...)``): inside the ``with`` block, each SAE's reconstruction replaces
  the activation at its ``cfg.hook_name``; with ``use_error_term=True`` the error ``x - x̂`` is added
  back, so the output equals the clean run (up to float rounding) while the latents stay hookable.
  Each spliced SAE adds hook points named as SAELens's (:data:`SAE_SPLICE_HOOKS`) under its hook.
  A transcoder reads its ``cfg.hook_name`` (``blocks.L.hook_mlp_in``) and its output replaces the
  activation at ``cfg.hook_name_out`` (``blocks.L.hook_mlp_out``); its hook points sit under the
  output hook, whose activation it replaces and whose error ``y - ŷ`` it adds back.
- :class:`Steering` / :func:`steered` (``model.steer(...)``, ``model.generate(steer=...)``): at every
  position, set one latent and change the activation by that latent's share only,
  ``x' = x + (f' - f) W_dec[latent]``; the rest of ``x`` (other latents, the SAE's error) is kept.
  For a transcoder ``f`` is read at its input hook and the output hook's activation changes.

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
from g2interp.sae.sae import JumpReLUSAE, transcoder_hook_out

SteerMode = Literal["clamp", "add", "scale"]
STEER_MODES: tuple[str, ...] = ("clamp", "add", "scale")
#: An SAE read at its ``cfg.hook_name``, or ``(hook_name, sae)`` to read it at another hook (a
#: transcoder read at ``blocks.L.hook_mlp_in`` then writes ``blocks.L.hook_mlp_out``).
SAEAt = JumpReLUSAE | tuple[str, JumpReLUSAE]
HookFn = Callable[..., Any]


class HookedModel(Protocol):
    """What splicing needs of a model: TransformerLens's ``hook_dict`` and ``hooks()`` context manager."""

    hook_dict: Mapping[str, HookPoint]

    def hooks(self, fwd_hooks: list[tuple[Any, HookFn]] = ...) -> Any: ...


# ---------------------------------------------------------------------------------------- checks
def check_hook_name(model: HookedModel, hook_name: str, what: str = "the SAE", verb: str = "reads") -> str:
    """``hook_name`` if it is a hook of ``model``; else a ValueError listing a few valid names."""
    if not hook_name:
        raise ValueError(f"{what} has no cfg.hook_name: set it, or pass (hook_name, sae)")
    names = list(model.hook_dict)
    if hook_name not in model.hook_dict:
        close = difflib.get_close_matches(hook_name, names, n=5, cutoff=0.5)
        hint = f"closest valid names: {close}" if close else f"valid names look like {names[:6]}"
        raise ValueError(
            f"{what} {verb} {hook_name!r}, which is not a hook of this model; {hint} "
            f"(model.hook_names lists all {len(names)})"
        )
    return hook_name


def flatten_positions(act: Tensor, sae: JumpReLUSAE, hook_name: str, *, output: bool = False) -> Tensor:
    """The activation as [B, Q, d_in] (heads of ``attn.hook_z`` flattened), in a dtype that holds both
    the model's and the SAE's values; a ValueError naming both widths if they differ. ``output``: the
    activation a transcoder writes, [B, Q, d_out]."""
    width = math.prod(act.shape[2:]) if act.dim() >= 3 else None
    expected = sae.cfg.d_out if output else sae.cfg.d_in
    if width != expected:
        what = (
            f"the transcoder writes {expected} (cfg.d_out)"
            if output
            else f"the SAE reads {expected} (cfg.d_in)"
        )
        raise ValueError(
            f"{hook_name} gives activations of shape {tuple(act.shape)} (width {width} per position); {what}"
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

    A transcoder reads ``hook_name`` (``blocks.L.hook_mlp_in``) and replaces the activation ``y`` at
    ``hook_name_out`` (``blocks.L.hook_mlp_out``). Its points keep SAELens's names but sit under the
    output hook (``blocks.L.hook_mlp_out.hook_sae_acts_post``): that is the activation it replaces, and
    one SAE or transcoder may write a hook while others read it. ``hook_sae_input`` is the MLP input
    [B, Q, d_in]; ``hook_sae_recons`` [B, Q, d_out] the transcoder's whole output ``f W_dec + b_dec``
    plus the skip term ``x W_skip^T`` (= ``sae(x)``); ``hook_sae_error`` is ``y - sae(x)``.
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
        #: the hook whose activation is replaced: the transcoder's output hook, or the SAE's own
        self.hook_name_out = transcoder_hook_out(hook_name) if sae.cfg.is_transcoder else hook_name
        self.use_error_term = use_error_term
        self.positions = positions
        self._x_in: Tensor | None = None  # a transcoder's input, from its input hook to its output hook
        for point in SAE_SPLICE_HOOKS:
            hook_point = HookPoint()
            hook_point.name = f"{self.hook_name_out}.{point}"
            setattr(self, point, hook_point)

    @property
    def hook_dict(self) -> dict[str, HookPoint]:
        """Full name -> hook point, for the six points above."""
        return {f"{self.hook_name_out}.{point}": getattr(self, point) for point in SAE_SPLICE_HOOKS}

    def _intervened(self) -> bool:
        """Whether a hook may have changed the latents (then the error needs a clean recomputation)."""
        points = (self.hook_sae_input, self.hook_sae_acts_pre, self.hook_sae_acts_post, self.hook_sae_recons)
        return any(p._forward_hooks for p in points)

    def forward(self, act: Tensor, x_in: Tensor | None = None) -> Tensor:
        """The activation that replaces ``act`` (same shape and dtype); a transcoder's ``x_in`` is the
        activation at its input hook."""
        sae = self.sae
        if sae.cfg.is_transcoder:
            if x_in is None:
                raise RuntimeError(f"the transcoder writing {self.hook_name_out} ran before {self.hook_name}")
            x_BQD = flatten_positions(x_in, sae, self.hook_name)
            y_BQO = flatten_positions(act, sae, self.hook_name_out, output=True)  # what it replaces
        else:
            x_BQD = y_BQO = flatten_positions(act, sae, self.hook_name)
        keep_BQ1 = None
        if self.positions is not None:
            if tuple(self.positions.shape) != tuple(act.shape[:2]):
                raise ValueError(
                    f"positions has shape {tuple(self.positions.shape)}; the activations at "
                    f"{self.hook_name_out} have [batch, pos] = {tuple(act.shape[:2])}"
                )
            keep_BQ1 = self.positions.to(act.device).bool()[:, :, None]
        x_in_BQD = self.hook_sae_input(x_BQD)
        pre_BQF = self.hook_sae_acts_pre(sae.pre_activations(x_in_BQD))
        f_BQF = self.hook_sae_acts_post(sae.activation(pre_BQF))
        out_BQO = self.hook_sae_recons(sae.output(f_BQF, x_in_BQD))
        if self.use_error_term:
            with torch.no_grad():  # as SAELens: the error is a constant; gradients flow through the SAE
                clean_BQO = sae.output(sae.encode(x_BQD), x_BQD) if self._intervened() else out_BQO
                error_BQO = y_BQO - clean_BQO
                if keep_BQ1 is not None:
                    error_BQO = torch.where(keep_BQ1, error_BQO, torch.zeros_like(error_BQO))
                error_BQO = self.hook_sae_error(error_BQO)
            out_BQO = out_BQO + error_BQO
        if keep_BQ1 is not None:  # positions left out keep their activation
            out_BQO = torch.where(keep_BQ1, out_BQO, y_BQO.to(out_BQO.dtype))
        out_BQO = self.hook_sae_output(out_BQO)
        return out_BQO.to(act.dtype).reshape(act.shape)

    def read_input(self, act: Tensor, hook: HookPoint) -> None:
        """The hook function at a transcoder's input hook: keep ``act`` for its output hook."""
        self._x_in = act

    def replace(self, act: Tensor, hook: HookPoint) -> Tensor:
        """The TransformerLens hook function: ``act`` at ``hook`` -> its replacement."""
        if not self.sae.cfg.is_transcoder:
            return self(act)
        x_in, self._x_in = self._x_in, None
        return self(act, x_in)


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
    """Check and wrap the SAEs to splice: each hook a hook of ``model``, one SAE per hook written
    (a transcoder writes its output hook, which must be the MLP output of the MLP input it reads)."""
    one = isinstance(saes, JumpReLUSAE) or (
        isinstance(saes, tuple) and len(saes) == 2 and isinstance(saes[0], str)
    )
    items = [saes] if one else list(saes)
    out: list[SplicedSAE] = []
    for item in items:
        hook_name, sae = item if isinstance(item, tuple) else (item.cfg.hook_name, item)
        if not isinstance(sae, JumpReLUSAE):
            raise TypeError(f"expected a JumpReLUSAE or (hook_name, JumpReLUSAE), got {type(item).__name__}")
        what = "the transcoder" if sae.cfg.is_transcoder else "the SAE"
        check_hook_name(model, hook_name, what)
        spliced = SplicedSAE(sae, hook_name, use_error_term=use_error_term, positions=positions)
        check_hook_name(model, spliced.hook_name_out, what, "writes")
        if any(s.hook_name_out == spliced.hook_name_out for s in out):
            raise ValueError(
                f"two SAEs or transcoders write {spliced.hook_name_out!r}; splice one SAE per hook"
            )
        out.append(spliced)
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
    A transcoder's output replaces ``hook_mlp_out`` from the ``hook_mlp_in`` of the same pass (after
    an SAE spliced at ``hook_mlp_in``, if any); its error term is ``mlp_out - transcoder(mlp_in)``.
    ``positions`` [B, Q] splices only where True (e.g. ``tokens != bos``); elsewhere activations pass
    unchanged. The block gets a :class:`Splice`, whose ``hooks()`` also reaches the SAEs' hook points.
    Everything is detached on exit, also when the block raises.
    """
    spliced = spliced_saes(model, saes, use_error_term=use_error_term, positions=positions)
    replace = [(s.hook_name_out, s.replace) for s in spliced]
    read = [(s.hook_name, s.read_input) for s in spliced if s.sae.cfg.is_transcoder]
    with model.hooks(fwd_hooks=[*replace, *read]):  # a transcoder reads what flows on at its input
        yield Splice(model, spliced)


# ---------------------------------------------------------------------------------------- steering
@dataclass(frozen=True)
class Steering:
    """Set one SAE latent at every position, changing the activation by that latent's share only.

    At the SAE's hook, with ``f`` the latent's activation on ``x`` and ``f'`` its new value:
    ``x' = x + (f' - f) W_dec[latent]`` (divided by the SAE's ``input_scale``), i.e. the SAE's
    reconstruction with the latent set, plus the SAE's error, so nothing else in ``x`` changes.
    A transcoder's ``f`` is read at its input hook (``hook_mlp_in``) and the activation ``y`` at its
    output hook changes: ``y' = y + (f' - f) W_dec[latent]``.
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
    """The hook that applies the steerings of one SAE (all its latents read from the same ``x``); a
    transcoder's also reads its input hook (:meth:`read_input`)."""

    def __init__(self, steerings: Sequence[Steering]):
        sae = steerings[0].sae
        self.sae, self.hook_name = sae, sae.cfg.hook_name
        self.hook_name_out = sae.cfg.hook_name_out or sae.cfg.hook_name
        self._f_BQN: Tensor | None = None  # a transcoder's steered latents, from input to output hook
        device = sae.W_enc.device
        self.latents_N = torch.tensor([s.latent for s in steerings], dtype=torch.long, device=device)
        self.values_N = torch.tensor([s.value for s in steerings], dtype=sae.W_enc.dtype, device=device)
        modes = [s.mode for s in steerings]
        self.clamp_N = torch.tensor([m == "clamp" for m in modes], device=device)
        self.add_N = torch.tensor([m == "add" for m in modes], device=device)

    @property
    def fwd_hooks(self) -> list[tuple[str, HookFn]]:
        """(hook name, function) pairs: at the hook, or a transcoder's input and output hooks."""
        if not self.sae.cfg.is_transcoder:
            return [(self.hook_name, self)]
        return [(self.hook_name_out, self), (self.hook_name, self.read_input)]

    def read_input(self, act: Tensor, hook: HookPoint) -> None:
        """At a transcoder's input hook: the steered latents' activations, for its output hook."""
        self._f_BQN = self.sae.encode(flatten_positions(act, self.sae, self.hook_name), self.latents_N)

    def __call__(self, act: Tensor, hook: HookPoint) -> Tensor:
        if self.sae.cfg.is_transcoder:
            f_BQN, self._f_BQN = self._f_BQN, None
            if f_BQN is None:
                raise RuntimeError(f"the transcoder writing {self.hook_name_out} ran before {self.hook_name}")
            x_BQD = flatten_positions(act, self.sae, self.hook_name_out, output=True)
        else:
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


def steering_hooks(model: HookedModel, steer: Sequence[SteerSpec]) -> list[tuple[str, HookFn]]:
    """Check the steerings against ``model`` and build the forward hooks: one per steered SAE, two per
    steered transcoder (its input and output hooks).

    Raises ValueError for a hook that is not the model's or a latent steered twice; an SAE whose
    ``d_in`` differs from its hook's width raises (naming both) at the first forward pass.
    """
    if isinstance(steer, Steering) or (isinstance(steer, tuple) and isinstance(steer[0], JumpReLUSAE)):
        steer = [steer]
    groups: dict[int, list[Steering]] = {}
    for spec in steer:
        s = Steering.of(spec)
        check_hook_name(model, s.sae.cfg.hook_name, "the steered SAE")
        if s.sae.cfg.is_transcoder:
            check_hook_name(model, s.sae.cfg.hook_name_out, "the steered transcoder", "writes")
        group = groups.setdefault(id(s.sae), [])
        if any(g.latent == s.latent for g in group):
            raise ValueError(f"latent {s.latent} of the SAE at {s.sae.cfg.hook_name!r} is steered twice")
        group.append(s)
    return [hook for group in groups.values() for hook in LatentSteer(group).fwd_hooks]


@contextmanager
def steered(model: HookedModel, steer: Sequence[SteerSpec]) -> Iterator[None]:
    """Inside the block, every forward pass of ``model`` runs with the latents steered."""
    with model.hooks(fwd_hooks=steering_hooks(model, steer)):
        yield
