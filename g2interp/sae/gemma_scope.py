"""Gemma Scope imports, offline: Gemma Scope 1 ``params.npz`` files and Gemma Scope 2 folders.

Gemma Scope 1 (Gemma 2): one ``params.npz`` per SAE with ``W_enc`` [d_in, d_sae], ``W_dec``
[d_sae, d_in], ``b_enc``, ``b_dec``, ``threshold``; its folders do not name their hook, so the
caller does.

Gemma Scope 2 (Gemma 3): a folder per SAE or transcoder holding ``params.safetensors`` with ``w_enc``
[d_in, d_sae], ``w_dec`` [d_sae, d_out], ``b_enc`` [d_sae], ``b_dec`` [d_out], ``threshold``
[d_sae] and, for a skip transcoder, ``affine_skip_connection`` [d_in, d_out] (``W_skip`` transposed),
and mostly a ``config.json`` (``architecture`` ``"jump_relu"``, ``affine_connection``,
``model_name``, ``hf_hook_point_in`` / ``hf_hook_point_out``). The hooks are inferred from the
folder's name as SAELens's ``get_gemma_3_config_from_hf`` does (:func:`gemma_scope_hooks`), unless
the caller names the hook.

Both read raw activations and do not subtract ``b_dec`` from the input. Nothing is unpickled.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from g2interp.constants import HOOK_MLP_IN, HOOK_MLP_OUT, HOOK_RESID_POST, HOOK_Z
from g2interp.sae.constants import (
    GEMMA_SCOPE_2_ARCHITECTURE,
    GEMMA_SCOPE_2_CONFIG_FILE,
    GEMMA_SCOPE_2_PARAMS_FILE,
    GEMMA_SCOPE_PARAMS_FILE,
)
from g2interp.sae.sae import WEIGHT_SHAPES, JumpReLUSAE, SAEConfig, SAEFormatError, transcoder_hook_out

logger = logging.getLogger(__name__)

#: Gemma Scope 2 tensor -> (our name, its shape in the file, by dimension names).
GEMMA_SCOPE_2_TENSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "w_enc": ("W_enc", ("d_in", "d_sae")),
    "w_dec": ("W_dec", ("d_sae", "d_out")),
    "b_enc": ("b_enc", ("d_sae",)),
    "b_dec": ("b_dec", ("d_out",)),
    "threshold": ("threshold", ("d_sae",)),
}
#: A skip transcoder's skip connection, stored [d_in, d_out], i.e. ``W_skip`` [d_out, d_in] transposed.
GEMMA_SCOPE_2_SKIP = "affine_skip_connection"
#: Folder-name keyword -> hook template, checked in this order (SAELens's order).
_SITES = (("resid_post", HOOK_RESID_POST), ("attn_out", HOOK_Z), ("mlp_out", HOOK_MLP_OUT))
#: The ``hf_hook_point_*`` of config.json (transformers module paths) -> the hook they name.
_HF_HOOK_POINTS = {
    "output": HOOK_RESID_POST,
    "self_attn.o_proj.input": HOOK_Z,
    "pre_feedforward_layernorm.output": HOOK_MLP_IN,
    "post_feedforward_layernorm.output": HOOK_MLP_OUT,
}
_HF_HOOK_POINT = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")


class GemmaScopeHooks(NamedTuple):
    """Where a Gemma Scope 2 SAE or transcoder reads and writes."""

    hook_name: str
    """Hook read, e.g. ``blocks.5.hook_resid_post``; a transcoder's is ``blocks.L.hook_mlp_in``."""
    hook_name_out: str
    """Hook a transcoder writes (``blocks.L.hook_mlp_out``); empty for an SAE."""


def gemma_scope_hooks(folder: str | Path) -> GemmaScopeHooks:
    """The hooks SAELens infers from a Gemma Scope 2 folder name, e.g. ``resid_post/layer_5_width_16k_l0_small``.

    Only the last two components of ``folder`` are read (the release's ``<site>/<sae>`` folders, so a
    parent folder's name does not count). ``layer_<L>`` gives the layer; then ``resid_post`` ->
    ``blocks.L.hook_resid_post``, ``attn_out`` -> ``blocks.L.attn.hook_z`` (heads flattened),
    ``mlp_out`` -> ``blocks.L.hook_mlp_out``, ``transcoder`` -> ``blocks.L.hook_mlp_in`` writing
    ``blocks.L.hook_mlp_out``. A ValueError says what is missing otherwise.
    """
    name = "/".join(Path(folder).parts[-2:])
    layer_match = re.search(r"layer_(\d+)", name)
    if layer_match is None:
        raise ValueError(
            f"cannot infer the hook from the folder name {name!r}: it has no 'layer_<n>' (Gemma Scope 2 "
            "folders are named like 'resid_post/layer_12_width_16k_l0_small'); pass hook_name="
        )
    layer = int(layer_match.group(1))
    for keyword, template in _SITES:
        if keyword in name:
            return GemmaScopeHooks(template.format(layer=layer), "")
    if "clt" in name:
        raise ValueError(f"{name!r} is a cross-layer transcoder (clt), which is not supported")
    if "transcoder" in name:
        return GemmaScopeHooks(HOOK_MLP_IN.format(layer=layer), HOOK_MLP_OUT.format(layer=layer))
    raise ValueError(
        f"cannot infer the hook from the folder name {name!r}: it names none of resid_post, attn_out, "
        "mlp_out, transcoder; pass hook_name="
    )


def load_gemma_scope(
    path: str | Path,
    *,
    hook_name: str | None = None,
    model_name: str = "",
    device: torch.device | str = "cpu",
    dtype: str = "float32",
) -> JumpReLUSAE:
    """Import a Gemma Scope SAE or transcoder from ``path``: a ``params.npz`` / ``params.safetensors``
    file, or a folder holding one of them (the file present decides the format).

    ``hook_name``: the hook read; required for Gemma Scope 1, inferred from the folder name for Gemma
    Scope 2 (see :func:`gemma_scope_hooks`). A Gemma Scope 2 file read at ``blocks.L.hook_mlp_in`` is a
    transcoder writing ``blocks.L.hook_mlp_out``. ``model_name`` defaults to config.json's.
    Raises FileNotFoundError, or :class:`SAEFormatError` for a missing, misshapen, non-float or
    non-finite tensor or a config.json of another architecture.
    """
    params = _params_file(Path(path))
    if params.name.endswith(".npz"):
        if hook_name is None:
            raise ValueError(
                f"{params} is a Gemma Scope 1 file, whose folders do not name their hook: pass hook_name= "
                "(e.g. 'blocks.12.hook_resid_post')"
            )
        arrays = read_npz_params(params)
        d_in, d_sae = arrays["W_enc"].shape
        cfg = SAEConfig(
            d_in=int(d_in),
            d_sae=int(d_sae),
            hook_name=hook_name,
            model_name=model_name,
            dtype=dtype,
            apply_b_dec_to_input=False,
            metadata={"source": "gemma_scope"},
        )
        tensors = {name: torch.from_numpy(arr) for name, arr in arrays.items()}
        return JumpReLUSAE.from_tensors(tensors, cfg, source=str(params), device=device)
    return _load_gemma_scope_2(params, hook_name=hook_name, model_name=model_name, device=device, dtype=dtype)


def _params_file(path: Path) -> Path:
    formats = (GEMMA_SCOPE_2_PARAMS_FILE, GEMMA_SCOPE_PARAMS_FILE)
    if path.is_dir():
        present = [path / name for name in formats if (path / name).is_file()]
        if not present:
            raise FileNotFoundError(
                f"{path} holds neither {GEMMA_SCOPE_2_PARAMS_FILE} (Gemma Scope 2) nor "
                f"{GEMMA_SCOPE_PARAMS_FILE} (Gemma Scope 1)"
            )
        if len(present) > 1:
            raise SAEFormatError(f"{path} holds both {formats[0]} and {formats[1]}: pass the file to read")
        return present[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    if path.suffix not in (".npz", ".safetensors"):
        raise SAEFormatError(f"{path}: expected a Gemma Scope .npz or .safetensors file (or their folder)")
    return path


def _load_gemma_scope_2(
    params: Path, *, hook_name: str | None, model_name: str, device: torch.device | str, dtype: str
) -> JumpReLUSAE:
    config = read_gemma_scope_2_config(params.parent / GEMMA_SCOPE_2_CONFIG_FILE)
    tensors = read_gemma_scope_2_params(params)
    affine_skip = "W_skip" in tensors
    if "affine_connection" in config and bool(config["affine_connection"]) != affine_skip:
        has = "has" if affine_skip else "has no"
        raise SAEFormatError(
            f"{params.parent / GEMMA_SCOPE_2_CONFIG_FILE} says affine_connection={config['affine_connection']!r} "
            f"but {params} {has} {GEMMA_SCOPE_2_SKIP!r}"
        )
    if hook_name is None:
        try:
            hooks = gemma_scope_hooks(params.parent)
        except ValueError as exc:
            raise SAEFormatError(f"{params}: {exc}") from exc
        _check_hf_hook_points(config, hooks, params.parent)
    else:  # Gemma Scope 2 has no SAEs on an MLP's input: a file read there is a transcoder
        transcoder = affine_skip or "hf_hook_point_out" in config or _reads_mlp_input(hook_name)
        hooks = GemmaScopeHooks(hook_name, transcoder_hook_out(hook_name) if transcoder else "")
    d_in, d_sae = tensors["W_enc"].shape
    metadata: dict[str, Any] = {"source": "gemma_scope_2"}
    for key, ours in (("hf_hook_point_in", "hf_hook_name"), ("hf_hook_point_out", "hf_hook_name_out")):
        if config.get(key) is not None:
            metadata[ours] = config[key]
    try:
        cfg = SAEConfig(
            d_in=int(d_in),
            d_sae=int(d_sae),
            d_out=int(tensors["W_dec"].shape[1]),
            hook_name=hooks.hook_name,
            hook_name_out=hooks.hook_name_out,
            affine_skip=affine_skip,
            model_name=model_name or str(config.get("model_name") or ""),
            dtype=dtype,
            apply_b_dec_to_input=False,
            reshape_hook_z=hooks.hook_name.endswith(".hook_z"),
            metadata=metadata,
        )
    except (TypeError, ValueError) as exc:
        raise SAEFormatError(f"{params}: {exc}") from exc
    sae = JumpReLUSAE.from_tensors(tensors, cfg, source=str(params), device=device)
    what = "transcoder" if cfg.is_transcoder else "SAE"
    logger.info(
        "imported Gemma Scope 2 %s at %s (d_in=%d, d_sae=%d) from %s",
        what,
        cfg.hook_name,
        d_in,
        d_sae,
        params,
    )
    return sae


def _reads_mlp_input(hook_name: str) -> bool:
    try:
        transcoder_hook_out(hook_name)
    except ValueError:
        return False
    return True


def _check_hf_hook_points(config: dict[str, Any], hooks: GemmaScopeHooks, folder: Path) -> None:
    """config.json's hook points, where they name a known module, must agree with the folder name."""
    for key, inferred in (("hf_hook_point_in", hooks.hook_name), ("hf_hook_point_out", hooks.hook_name_out)):
        point = config.get(key)
        match = _HF_HOOK_POINT.search(point) if isinstance(point, str) else None
        if match is None or match.group(2) not in _HF_HOOK_POINTS:
            continue
        named = _HF_HOOK_POINTS[match.group(2)].format(layer=int(match.group(1)))
        if key == "hf_hook_point_out" and named == hooks.hook_name:
            continue  # an mlp_out SAE's config may name its only hook as the output
        if named != inferred:
            raise SAEFormatError(
                f"{folder / GEMMA_SCOPE_2_CONFIG_FILE}: {key}={point!r} is {named}, but the folder name says "
                f"{inferred or 'no output hook (an SAE)'}; pass hook_name= to choose"
            )


def read_gemma_scope_2_config(path: Path) -> dict[str, Any]:
    """A Gemma Scope 2 ``config.json`` (``{}`` when absent); its ``architecture`` must be ``jump_relu``."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise SAEFormatError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise SAEFormatError(f"{path} must hold a JSON object")
    if raw.get("architecture") != GEMMA_SCOPE_2_ARCHITECTURE:
        raise SAEFormatError(
            f"{path}: architecture is {raw.get('architecture')!r}; Gemma Scope 2 SAEs and transcoders are "
            f"{GEMMA_SCOPE_2_ARCHITECTURE!r} (JumpReLU)"
        )
    if "affine_connection" in raw and not isinstance(raw["affine_connection"], bool):
        raise SAEFormatError(
            f"{path}: affine_connection must be true or false, got {raw['affine_connection']!r}"
        )
    if "model_name" in raw and not isinstance(raw["model_name"], str):
        raise SAEFormatError(f"{path}: model_name must be a string, got {raw['model_name']!r}")
    return raw


def read_gemma_scope_2_params(path: Path) -> dict[str, Tensor]:
    """The tensors of a Gemma Scope 2 ``params.safetensors`` under our names (``W_skip`` [d_out, d_in]
    from ``affine_skip_connection``), each float, finite and shaped consistently; unknown keys are
    ignored with a warning."""
    try:
        raw = load_file(path, device="cpu")
    except (SafetensorError, OSError) as exc:
        raise SAEFormatError(f"cannot read {path} as safetensors: {exc}") from exc
    expected = [*GEMMA_SCOPE_2_TENSORS, f"optionally {GEMMA_SCOPE_2_SKIP}"]
    missing = [key for key in GEMMA_SCOPE_2_TENSORS if key not in raw]
    if missing:
        raise SAEFormatError(f"{path} lacks key(s) {missing}; Gemma Scope 2 params hold {expected}")
    for key in sorted(set(raw) - set(GEMMA_SCOPE_2_TENSORS) - {GEMMA_SCOPE_2_SKIP}):
        logger.warning("%s: ignoring unknown key %r", path, key)
    w_enc, w_dec = raw["w_enc"], raw["w_dec"]
    if w_enc.ndim != 2 or w_dec.ndim != 2:
        raise SAEFormatError(
            f"{path}: w_enc {tuple(w_enc.shape)} and w_dec {tuple(w_dec.shape)} must be matrices "
            "(d_in, d_sae) and (d_sae, d_out)"
        )
    dims = {"d_in": w_enc.shape[0], "d_sae": w_enc.shape[1], "d_out": w_dec.shape[1]}
    layout = {**GEMMA_SCOPE_2_TENSORS, GEMMA_SCOPE_2_SKIP: ("W_skip", ("d_in", "d_out"))}
    out: dict[str, Tensor] = {}
    for key, (ours, dim_names) in layout.items():
        if key not in raw:
            continue
        tensor = raw[key]
        shape = tuple(dims[d] for d in dim_names)
        if tuple(tensor.shape) != shape:
            sizes = ", ".join(f"{d}={n}" for d, n in dims.items())
            raise SAEFormatError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, expected {shape} ({', '.join(dim_names)}) "
                f"for {sizes} (read from w_enc and w_dec)"
            )
        if not tensor.is_floating_point():
            raise SAEFormatError(f"{path}: {key} has dtype {tensor.dtype}, expected a float tensor")
        if not torch.isfinite(tensor).all():
            raise SAEFormatError(f"{path}: {key} holds NaN or inf")
        out[ours] = tensor.T.contiguous() if key == GEMMA_SCOPE_2_SKIP else tensor
    return out


def read_npz_params(path: Path) -> dict[str, np.ndarray]:
    """The five JumpReLU arrays of a Gemma Scope ``params.npz``, each float and finite (no pickles)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    out: dict[str, np.ndarray] = {}
    try:
        npz = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise SAEFormatError(f"cannot read {path} as an .npz archive: {exc}") from exc
    with npz:
        keys = set(npz.files)
        missing = [name for name in WEIGHT_SHAPES if name not in keys]
        if missing:
            raise SAEFormatError(
                f"{path} lacks key(s) {missing}; Gemma Scope params hold {list(WEIGHT_SHAPES)}"
            )
        for name in sorted(keys - set(WEIGHT_SHAPES)):
            if name == "scaling_factor":
                try:
                    scale = npz[name]
                except ValueError as exc:
                    raise SAEFormatError(f"{path}: key 'scaling_factor' cannot be read: {exc}") from exc
                if scale.dtype.kind != "f" or not np.all(scale == 1):
                    raise SAEFormatError(
                        f"{path}: key 'scaling_factor' is not all ones; that is not supported"
                    )
            else:
                logger.warning("%s: ignoring unknown key %r", path, name)
        for name in WEIGHT_SHAPES:
            try:
                arr = npz[name]
            except ValueError as exc:  # object arrays need pickle, which is refused
                raise SAEFormatError(f"{path}: key {name!r} cannot be read without pickle ({exc})") from exc
            if arr.dtype.kind != "f":
                raise SAEFormatError(f"{path}: key {name!r} has dtype {arr.dtype}, expected a float array")
            if not np.isfinite(arr).all():
                raise SAEFormatError(f"{path}: key {name!r} holds NaN or inf")
            out[name] = np.ascontiguousarray(arr, dtype=np.float32)
    if out["W_enc"].ndim != 2:  # the other shapes are checked against it by from_tensors
        raise SAEFormatError(f"{path}: key 'W_enc' has shape {out['W_enc'].shape}, expected (d_in, d_sae)")
    return out
