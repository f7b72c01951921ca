"""Trainer checkpoints: a folder per saved step, written under a temporary name and renamed, then
``latest.json`` replaced atomically, so a killed run always finds its last complete checkpoint.

``step_000001000/`` holds ``trainer_state.safetensors`` (weights, Adam moments, firing counters, torch
RNG) and ``trainer_state.json`` (step, input and output scales, config). :class:`CheckpointMixin` gives
:class:`~g2interp.sae.trainer.SAETrainer` its ``save_checkpoint`` and ``resume``; a trainer built with
the same arguments resumes from one and ends bitwise equal to an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from g2interp.files import atomic_write_bytes, atomic_write_text
from g2interp.sae.constants import (
    CHECKPOINT_DIR_TEMPLATE,
    CHECKPOINT_LATEST_FILE,
    CHECKPOINT_STATE_FILE,
    CHECKPOINT_TENSORS_FILE,
)
from g2interp.sae.training import SAETrainingConfig

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 2  # 2: thresholds trained directly, buffers, output scale
#: Config fields a resumed run may change: they do not touch the numbers.
_RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoints", "log_every")
#: Per-latent firing counters of the trainer, one tensor per SAE each.
_COUNTERS = ("steps_since_fired", "window_fired", "previous_window_fired")


class CheckpointMismatchError(ValueError):
    """A checkpoint folder belongs to a run with other settings."""


class CheckpointMixin:
    """Saving and restoring the whole training state of an :class:`~g2interp.sae.trainer.SAETrainer`."""

    cfg: SAETrainingConfig
    checkpoint_dir: Path | None
    metrics_log: Path | None
    is_main: bool
    step: int
    input_scale: float | None
    output_scale: float | None
    last_checkpoint: Path | None

    def _truncate_metrics_log(self) -> None:
        """Drop log lines past the resumed step (they are logged again)."""
        if self.metrics_log is None or not self.metrics_log.is_file() or not self.is_main:
            return
        lines = self.metrics_log.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line cut short by the kill
        atomic_write_text(self.metrics_log, "".join(k + "\n" for k in kept))

    def _state_tensors(self) -> dict[str, Tensor]:
        tensors: dict[str, Tensor] = {"rng.torch": torch.get_rng_state()}
        for i, (sae, opt) in enumerate(zip(self.saes, self.optimizers, strict=True)):
            for name, param in sae.named_parameters():
                tensors[f"sae{i}.{name}"] = param.detach()
                for key, value in opt.state.get(param, {}).items():
                    tensors[f"sae{i}.adam.{name}.{key}"] = value
            for name, buffer in sae.named_buffers():  # state that is not trained (a running threshold)
                tensors[f"sae{i}.buffer.{name}"] = buffer
            for name in _COUNTERS:
                tensors[f"sae{i}.{name}"] = getattr(self, name)[i]
        return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def _state_json(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "tokens": self.step * self.cfg.batch_size,
            "batches_consumed": self.step,
            "input_scale": self.input_scale,
            "window_steps": self.window_steps,
            "previous_window_steps": self.previous_window_steps,
            "output_scale": self.output_scale,
            "l0_coefficients": _coefficients(self.saes),
            "bandwidths": _bandwidths(self.saes),
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self) -> Path:
        """Write the full training state for the current step (atomically); prune old checkpoints."""
        if self.checkpoint_dir is None:
            raise ValueError("the trainer has no checkpoint_dir")
        root = self.checkpoint_dir
        root.mkdir(parents=True, exist_ok=True)
        final = root / CHECKPOINT_DIR_TEMPLATE.format(step=self.step)
        if final.is_dir() and self.last_checkpoint == final:
            return final
        if not self.is_main:  # data-parallel: rank 0 writes, every rank knows where
            self.last_checkpoint = final
            return final
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        atomic_write_bytes(tmp / CHECKPOINT_TENSORS_FILE, safetensors_bytes(self._state_tensors()))
        atomic_write_text(tmp / CHECKPOINT_STATE_FILE, json.dumps(self._state_json(), indent=2) + "\n")
        if final.exists():  # a stale folder of this step from a run that never pointed latest.json at it
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_text(
            root / CHECKPOINT_LATEST_FILE, json.dumps({"step": self.step, "dir": final.name}) + "\n"
        )
        self.last_checkpoint = final
        logger.info("checkpoint at step %d: %s", self.step, final)
        self._prune_checkpoints()
        return final

    def _prune_checkpoints(self) -> None:
        assert self.checkpoint_dir is not None
        folders = sorted(p for p in self.checkpoint_dir.glob("step_*") if p.is_dir())
        for old in folders[: -self.cfg.keep_checkpoints]:
            if old != self.last_checkpoint:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> bool:
        """Load the newest complete checkpoint in ``checkpoint_dir``, if any; True if one was loaded."""
        root = self.checkpoint_dir
        if root is None:
            return False
        for leftover in root.glob(".step_*.tmp-*") if self.is_main else ():  # cut short by a kill
            shutil.rmtree(leftover, ignore_errors=True)
        if not (root / CHECKPOINT_LATEST_FILE).is_file():
            return False
        latest = json.loads((root / CHECKPOINT_LATEST_FILE).read_text())
        folder = root / latest["dir"]
        state = json.loads((folder / CHECKPOINT_STATE_FILE).read_text())
        self._check_compatible(state, folder)
        tensors = load_file(folder / CHECKPOINT_TENSORS_FILE)
        with torch.no_grad():
            for i, (sae, opt) in enumerate(zip(self.saes, self.optimizers, strict=True)):
                opt_state: dict[int, dict[str, Tensor]] = {}
                for name, buffer in sae.named_buffers():
                    buffer.copy_(tensors[f"sae{i}.buffer.{name}"])
                for j, (name, param) in enumerate(sae.named_parameters()):
                    param.copy_(tensors[f"sae{i}.{name}"])
                    moments = {
                        key: tensors[f"sae{i}.adam.{name}.{key}"]
                        for key in ("step", "exp_avg", "exp_avg_sq")
                        if f"sae{i}.adam.{name}.{key}" in tensors
                    }
                    if moments:
                        opt_state[j] = moments
                opt.load_state_dict({"state": opt_state, "param_groups": opt.state_dict()["param_groups"]})
                for name in _COUNTERS:
                    getattr(self, name)[i] = tensors[f"sae{i}.{name}"].to(self.device)
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(state["step"])
        self.input_scale = float(state["input_scale"])
        self.output_scale = float(state["output_scale"])
        self.window_steps = int(state["window_steps"])
        self.previous_window_steps = int(state["previous_window_steps"])
        self.last_checkpoint = folder
        self._truncate_metrics_log()
        logger.info("resumed from %s at step %d", folder, self.step)
        return True

    def _check_compatible(self, state: dict[str, Any], folder: Path) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(
                f"{folder}: checkpoint format {state.get('format')!r} is not {CHECKPOINT_FORMAT}"
            )
        # fields added since the checkpoint was written count as their defaults
        defaults = {f.name: f.default for f in dataclasses.fields(SAETrainingConfig)}
        saved = {k: v for k, v in {**defaults, **state["config"]}.items() if k not in _RESUMABLE_CHANGES}
        current = {k: v for k, v in self.cfg.to_dict().items() if k not in _RESUMABLE_CHANGES}
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        if changed:
            detail = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
            raise CheckpointMismatchError(f"{folder} was written with other settings ({detail})")
        coefs, bandwidths = _coefficients(self.saes), _bandwidths(self.saes)
        if state["l0_coefficients"] != coefs or state["bandwidths"] != bandwidths:
            raise CheckpointMismatchError(
                f"{folder} holds SAEs with L0 coefficients {state['l0_coefficients']} and bandwidths "
                f"{state['bandwidths']}; this trainer has {coefs} and {bandwidths}"
            )


def _coefficients(saes: list[Any]) -> list[float | None]:
    return [getattr(sae, "l0_coefficient", None) for sae in saes]


def _bandwidths(saes: list[Any]) -> list[float | None]:
    return [getattr(sae, "bandwidth", None) for sae in saes]
