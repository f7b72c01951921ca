"""SAETrainer: kill -9 and resume bit for bit, NaN batches, checkpoints, sweeps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from g2interp.sae import (
    CheckpointMismatchError,
    JumpReLUSAE,
    NonFiniteError,
    SAETrainer,
    SAETrainingConfig,
    make_saes,
)
from g2interp.sae.constants import (
    CHECKPOINT_LATEST_FILE,
    CHECKPOINT_TENSORS_FILE,
    SAE_SPARSITY_FILE,
    SAE_WEIGHTS_FILE,
)

WORKER = Path(__file__).with_name("sae_train_worker.py")


def start_worker(ckpt: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(ckpt), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish_worker(proc: subprocess.Popen) -> None:
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    assert "DONE" in stdout


def kill_when_paused(proc: subprocess.Popen, step: int) -> None:
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"PAUSED {step}", line + proc.stderr.read()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def final_state(ckpt: Path) -> dict[str, torch.Tensor]:
    latest = json.loads((ckpt / CHECKPOINT_LATEST_FILE).read_text())
    state = load_file(ckpt / latest["dir"] / CHECKPOINT_TENSORS_FILE)
    for i in range(2):
        for name, t in load_file(ckpt / f"sae_{i}" / SAE_WEIGHTS_FILE).items():
            state[f"final{i}.{name}"] = t
    return state


def test_kill_9_then_resume_is_bitwise_equal(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = start_worker(reference)  # runs alongside the one we kill
    kill_when_paused(start_worker(killed, "--pause-at", "8"), 8)  # latest checkpoint: 5; steps 6-8 are lost
    finish_worker(uninterrupted)
    assert json.loads((killed / CHECKPOINT_LATEST_FILE).read_text())["step"] == 5
    (killed / ".step_000000010.tmp-1").mkdir()  # as if killed while writing a checkpoint
    finish_worker(start_worker(killed, "--iterable"))  # resume through the skip-consumed-batches path

    ref, got = final_state(reference), final_state(killed)
    assert ref.keys() == got.keys()
    assert any(k.startswith("sae0.adam.") for k in ref)  # optimizer moments are part of the state
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert not list(killed.glob(".step_*"))
    assert sorted(p.name for p in killed.glob("step_*")) == ["step_000000015", "step_000000020"]

    logs = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 21))  # the lost steps were logged once, not twice
    ref_logs = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert logs == ref_logs
    # the sweep exercised both kernels
    assert {s["sparse"] for r in logs for s in r["saes"][1:]} == {True}
    assert {r["saes"][0]["sparse"] for r in logs} == {False}


def _batches(n: int, d_in: int = 8, batch: int = 16, nan_at: int | None = None) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = [torch.randn(batch, d_in, generator=gen) * 3 for _ in range(n)]
    if nan_at is not None:
        out[nan_at][2, 3] = float("nan")
    return out


def _cfg(**overrides) -> SAETrainingConfig:
    base = dict(
        d_in=8,
        d_sae=32,
        batch_size=16,
        total_tokens=16 * 12,
        lr=1e-3,
        lr_warmup_steps=2,
        l0_warmup_steps=3,
        n_norm_batches=2,
        checkpoint_every=2,
        keep_checkpoints=3,
        log_every=4,
        dead_window_steps=3,
    )
    return SAETrainingConfig(**{**base, **overrides})


def test_nan_batch_raises_with_step_and_keeps_last_checkpoint(tmp_path):
    cfg = _cfg()
    trainer = SAETrainer(cfg, None, _batches(12, nan_at=5), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(NonFiniteError, match=r"batch at step 5 holds NaN.*step_000000004"):
        trainer.fit()
    assert json.loads((tmp_path / CHECKPOINT_LATEST_FILE).read_text())["step"] == 4
    # a NaN in the batches that set the input scale is caught there, with its step
    with pytest.raises(NonFiniteError, match="batch at step 1 holds NaN"):
        SAETrainer(cfg, None, _batches(12, nan_at=1), progress=False).fit()

    # fixing the data and re-running resumes from step 4 and equals a clean run
    resumed = SAETrainer(cfg, None, _batches(12), checkpoint_dir=tmp_path, progress=False).fit()[0]
    clean = SAETrainer(cfg, None, _batches(12), progress=False).fit()[0]
    for name in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        assert torch.equal(getattr(resumed, name), getattr(clean, name)), name


def test_checkpoint_from_other_settings_is_refused(tmp_path):
    first = SAETrainer(_cfg(), None, _batches(12), checkpoint_dir=tmp_path, progress=False).fit()[0]
    # re-running a finished run reads no batches and returns the same SAE
    again = SAETrainer(_cfg(), None, [], checkpoint_dir=tmp_path, progress=False).fit()[0]
    assert torch.equal(first.W_enc, again.W_enc) and torch.equal(first.threshold, again.threshold)
    with pytest.raises(CheckpointMismatchError, match=r"lr: 0.001 -> 0.002"):
        SAETrainer(_cfg(lr=2e-3), None, _batches(12), checkpoint_dir=tmp_path, progress=False).fit()
    # logging and checkpoint cadence may change
    SAETrainer(_cfg(log_every=1), None, _batches(12), checkpoint_dir=tmp_path, progress=False).fit()


def test_sweep_trains_saes_and_saves_them(tmp_path):
    cfg = _cfg(l0_coefficient=1e-2, total_tokens=16 * 12, lr=5e-3)
    seen = []
    trainer = SAETrainer(
        cfg,
        make_saes(cfg, [1e-3, 1e-1]),
        lambda start: iter(_batches(12)[start:]),
        callbacks=[lambda tr, m: seen.append(m)],
        checkpoint_dir=tmp_path,
        progress=False,
    )
    final = trainer.fit()
    assert [m.step for m in seen] == list(range(1, 13))
    assert seen[0].saes[0].l0_coefficient == 0.0 and seen[-1].saes[1].l0_coefficient == 1e-1
    assert len(final) == 2 and all(s.cfg.input_scale == 1.0 for s in final)
    for sae in trainer.saes:
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(32))
    # the saved SAEs read raw activations: the trainer's scaled SAE on scaled input gives the same
    x = _batches(1)[0]
    scale = trainer.input_scale
    with torch.no_grad():
        recon_scaled, _, _ = trainer.saes[0](x * scale)
    loaded = JumpReLUSAE.load(tmp_path / "sae_0")
    torch.testing.assert_close(loaded(x), recon_scaled / scale, rtol=1e-4, atol=1e-4)
    assert loaded.cfg.metadata["l0_coefficient"] == 1e-3
    assert load_file(tmp_path / "sae_0" / SAE_SPARSITY_FILE)["sparsity"].shape == (32,)
    # the input scale gives the first batches unit mean squared norm
    head = torch.cat(_batches(2))
    assert (head * scale).pow(2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-5)


def test_batch_errors():
    with pytest.raises(ValueError, match=r"shape \(16, 9\), expected \(16, 8\)"):
        SAETrainer(_cfg(), None, [torch.zeros(16, 9)] * 12, progress=False).fit()
    with pytest.raises(ValueError, match="stream ended at step 5"):
        SAETrainer(_cfg(), None, _batches(5), progress=False).fit()
