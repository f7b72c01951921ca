"""Data-parallel training: 2 gloo ranks on the CPU step as one process fed the concatenated batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from g2interp.distributed import DataParallel
from g2interp.sae.constants import CHECKPOINT_LATEST_FILE, SAE_WEIGHTS_FILE
from tests.sae.ddp_worker import shard_batches

WORKER = Path(__file__).with_name("ddp_worker.py")
STEPS = 12
# Two ranks sum float32 gradients of 32 rows each where one process sums 64 rows in one matmul:
# the gradients differ by float32 rounding (~1e-7 relative). Adam with beta1 = 0 divides each gradient
# by its own running RMS, so over 12 steps the weights drift apart by about that much of their scale
# (measured: at most 4e-7 of a tensor's largest element); 2e-5 leaves a wide margin for other BLAS
# blockings while still catching a wrong average (a factor of 2 in any gradient moves weights by ~lr).
REL_TOL = 2e-5


def launch(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> str:
    try:
        stdout, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, stderr[-3000:]
    assert "DONE" in stdout
    return stdout


def close_to_scale(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp(min=1e-30))


def test_two_gloo_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    rendezvous = tmp_path / "rendezvous"
    ranks = [
        launch(tmp_path / "ddp", "--world", "2", "--rank", str(r), "--init-file", str(rendezvous))
        for r in range(2)
    ]
    single = finish(launch(tmp_path / "single"))  # runs while the ranks run
    outputs = [finish(p) for p in ranks]

    for run in ("fixed", "steered"):
        for i in range(2):
            ref = load_file(tmp_path / "single" / run / f"sae_{i}" / SAE_WEIGHTS_FILE)
            got = load_file(tmp_path / "ddp" / run / f"sae_{i}" / SAE_WEIGHTS_FILE)
            assert ref.keys() == got.keys()
            for name in ref:
                assert close_to_scale(ref[name], got[name]) < REL_TOL, (run, i, name)
        ref_log = [json.loads(line) for line in (tmp_path / "single" / run / "metrics.jsonl").open()]
        got_log = [json.loads(line) for line in (tmp_path / "ddp" / run / "metrics.jsonl").open()]
        # rank 0 alone wrote the log: one line per step, with global-batch metrics
        assert [r["step"] for r in got_log] == list(range(1, STEPS + 1))
        for ref_rec, got_rec in zip(ref_log, got_log, strict=True):
            assert ref_rec["tokens"] == got_rec["tokens"]
            for ref_sae, got_sae in zip(ref_rec["saes"], got_rec["saes"], strict=True):
                assert ref_sae["l0"] == got_sae["l0"]  # the same latents fired
                assert ref_sae["dead_fraction"] == got_sae["dead_fraction"]
                for key in ("mse", "fvu", "loss", "l0_coefficient"):
                    assert got_sae[key] == pytest.approx(ref_sae[key], rel=1e-5), key
        assert not list((tmp_path / "ddp" / run).glob(".step_*"))
    # the sweep's second SAE took the sparse kernels, the steered run moved λ
    assert {s["sparse"] for r in got_log for s in r["saes"]} == {True}
    fixed_log = [json.loads(line) for line in (tmp_path / "ddp" / "fixed" / "metrics.jsonl").open()]
    assert {r["saes"][0]["sparse"] for r in fixed_log} == {False}
    assert got_log[-1]["saes"][0]["l0_coefficient"] != got_log[0]["saes"][0]["l0_coefficient"]

    # stopped at step 6 and resumed from the step-4 checkpoint: bitwise the uninterrupted run
    for i in range(2):
        ref = load_file(tmp_path / "ddp" / "fixed" / f"sae_{i}" / SAE_WEIGHTS_FILE)
        got = load_file(tmp_path / "ddp" / "resumed" / f"sae_{i}" / SAE_WEIGHTS_FILE)
        assert all(torch.equal(ref[k], got[k]) for k in ref)
    resumed_log = (tmp_path / "ddp" / "resumed" / "metrics.jsonl").read_text()
    assert resumed_log == (tmp_path / "ddp" / "fixed" / "metrics.jsonl").read_text()

    # a NaN in rank 1's slice stops both ranks at the same step; the last checkpoint stays
    for out in (single, *outputs):
        assert "NONFINITE batch at step 5 holds NaN or inf" in out
    latest = json.loads((tmp_path / "ddp" / "nan" / CHECKPOINT_LATEST_FILE).read_text())
    assert latest["step"] == 4


def test_shard_batches_and_local_batch_size():
    batches = [torch.arange(12.0).reshape(6, 2)]
    assert torch.equal(next(shard_batches(batches, DataParallel(1, 3))), batches[0][2:4])
    assert next(shard_batches(batches, None)) is batches[0]
    with pytest.raises(ValueError, match="not divisible"):
        DataParallel(0, 4).local_batch_size(6)
    with pytest.raises(ValueError, match="rank 2 is not in a group of 2"):
        DataParallel(2, 2)
