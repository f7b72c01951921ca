"""Finding SAEs in a runs folder, with their evaluation results, for the explorer and its evaluation charts."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from g2interp.dashboards.constants import DASHBOARD_MANIFEST_FILE, DASHBOARDS_DIR
from g2interp.sae.constants import DELTA_LOSS_RESULTS_FILE, EVAL_RESULTS_FILE, SAE_CFG_FILE, SAE_WEIGHTS_FILE

logger = logging.getLogger(__name__)

_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.(.+)$")
#: Short names of the sites SAEs are usually trained on.
SITE_NAMES = {"hook_resid_post": "resid_post", "attn.hook_z": "attn_z", "hook_mlp_out": "mlp_out"}


def parse_hook(hook_name: str) -> tuple[int | None, str]:
    """(layer, site) of a hook name: ``blocks.6.hook_resid_post`` -> ``(6, "resid_post")``."""
    match = _BLOCK_HOOK.match(hook_name)
    if not match:
        return None, hook_name or "?"
    site = match.group(2)
    return int(match.group(1)), SITE_NAMES.get(site, site)


@dataclass(frozen=True)
class SAEEntry:
    """An SAE folder found under a runs folder."""

    path: Path
    """The folder (cfg.json + sae_weights.safetensors)."""
    hook_name: str
    """Hook the SAE reads ('' when its cfg.json names none)."""
    layer: int | None
    """Block of the hook (None for hooks outside the blocks)."""
    site: str
    """Site within the block: resid_post, attn_z, mlp_out, ..."""
    d_in: int
    """Input width."""
    d_sae: int
    """Latents."""
    model_name: str
    """Model it was trained on, as recorded."""
    has_dashboards: bool
    """Whether ``dashboards/`` holds a complete build."""
    eval: dict[str, Any] | None
    """``eval.json`` (L0, FVU, dead fraction...), when present."""
    delta_loss: dict[str, Any] | None
    """``delta_lm_loss.json``, when present."""
    provenance: dict[str, Any] | None = None
    """Where its activations come from (cfg.json ``metadata.activations``: fingerprint, model, store, packing)."""

    @property
    def source_model(self) -> str:
        """The model its activations come from, as ``load_model`` takes it ('' when unrecorded)."""
        return str((self.provenance or {}).get("model") or "")

    def label(self, root: str | Path | None = None) -> str:
        """``L6 resid_post · 4096 latents · runs/demo/sae_0``-style name for menus."""
        where = self.path
        if root is not None:
            try:
                where = self.path.relative_to(root)
            except ValueError:
                pass
        layer = "" if self.layer is None else f"L{self.layer} "
        return f"{layer}{self.site} · {self.d_sae} latents · {where}"


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return None
    return value if isinstance(value, dict) else None


def read_entry(folder: str | Path) -> SAEEntry | None:
    """The SAE in ``folder``, or None when it holds none (or an unreadable cfg.json)."""
    folder = Path(folder)
    if not (folder / SAE_WEIGHTS_FILE).is_file():
        return None
    cfg = _read_json(folder / SAE_CFG_FILE)
    if cfg is None:
        return None
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point") or ""
    layer, site = parse_hook(hook)
    return SAEEntry(
        path=folder,
        hook_name=hook,
        layer=layer,
        site=site,
        d_in=int(cfg.get("d_in", 0)),
        d_sae=int(cfg.get("d_sae", 0)),
        model_name=str(meta.get("model_name") or cfg.get("model_name") or ""),
        has_dashboards=(folder / DASHBOARDS_DIR / DASHBOARD_MANIFEST_FILE).is_file(),
        eval=_read_json(folder / EVAL_RESULTS_FILE),
        delta_loss=_read_json(folder / DELTA_LOSS_RESULTS_FILE),
        provenance=meta.get("activations") if isinstance(meta.get("activations"), dict) else None,
    )


def find_saes(root: str | Path) -> list[SAEEntry]:
    """Every SAE folder under ``root`` (``root`` itself included), by layer, site and path."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    found = []
    for cfg_path in sorted(root.rglob(SAE_CFG_FILE)):
        if any(part.startswith(".") for part in cfg_path.relative_to(root).parts):
            continue
        entry = read_entry(cfg_path.parent)
        if entry is not None:
            found.append(entry)
    return sorted(found, key=lambda e: (e.layer is None, e.layer or 0, e.site, str(e.path)))


def eval_rows(entries: list[SAEEntry], root: str | Path | None = None) -> list[dict[str, Any]]:
    """One row per evaluated SAE: layer, site, L0, FVU, Δ loss, loss recovered, dead %."""
    rows = []
    for e in entries:
        if e.eval is None and e.delta_loss is None:
            continue
        ev, dl = e.eval or {}, e.delta_loss or {}
        dead = ev.get("dead_fraction")
        rows.append(
            {
                "layer": e.layer,
                "site": e.site,
                "hook": e.hook_name,
                "d_sae": e.d_sae,
                "L0": ev.get("l0"),
                "FVU": ev.get("fvu"),
                "delta_loss": dl.get("delta_loss"),
                "loss_recovered": dl.get("fraction_recovered"),
                "dead_pct": None if dead is None else 100.0 * dead,
                "eval_tokens": ev.get("n_tokens"),
                "sae": e.label(root),
            }
        )
    return rows
