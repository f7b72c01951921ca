"""`make demo`'s pipeline (experiments/demo_pipeline.py), shrunk, on the embedded model: every stage runs,
writes what the explorer reads, serves the explorer on localhost, and a second run reuses it all."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from g2interp.sae import JumpReLUSAE
from g2interp.sae.constants import DELTA_LOSS_RESULTS_FILE, EVAL_RESULTS_FILE
from tests.tiny import free_port, one_thread

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "fixtures" / "corpus_small.jsonl"


def _demo_module():
    spec = importlib.util.spec_from_file_location("demo_pipeline", REPO / "experiments" / "demo_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_demo_pipeline_runs_every_stage_then_reuses_them(tmp_path, capsys, caplog):
    demo = _demo_module()
    out = tmp_path / "demo"
    argv = [
        "--out", str(out),
        "--data", str(CORPUS),
        "--train-contexts", "16",
        "--eval-contexts", "4",
        "--delta-loss-contexts", "2",
        "--d-sae", "256",
        "--batch-size", "256",
        "--epochs", "2",
        "--port", str(free_port()),
        "--serve-for", "0",
    ]  # fmt: skip
    caplog.set_level("INFO", logger="demo")
    with one_thread():
        demo.main(argv)
    printed = capsys.readouterr().out

    hook = "blocks.6.hook_resid_post"  # the first layer the shipped probe heads read
    sae_dir = out / "saes" / hook / "sae_0"
    sae = JumpReLUSAE.load(sae_dir)
    assert sae.cfg.hook_name == hook and sae.cfg.d_sae == 256 and sae.cfg.d_in == 640
    evaluation = json.loads((sae_dir / EVAL_RESULTS_FILE).read_text())
    delta = json.loads((sae_dir / DELTA_LOSS_RESULTS_FILE).read_text())
    assert evaluation["l0"] > 0 and delta["ce_sae"] < delta["ce_zero"]
    assert evaluation["split"] == "eval" and evaluation["n_contexts"] == 4 and delta["n_contexts"] == 2
    assert "passes over the store's" in printed and "distinct training tokens" in printed
    assert "held-out (4 contexts" in printed
    assert (sae_dir / "dashboards").is_dir()
    # the summary: the SAE's evaluation, the examples' verdicts, the explanation, and the explorer's URL
    assert f"SAE {sae_dir}" in printed and "loss recovered" in printed
    assert "allowed  'What is the capital of France?'" in printed
    assert "blocked  'You are a worthless idiot" in printed
    assert "logit" in printed and "SAE error" in printed
    assert "Explorer: http://localhost:" in printed
    first = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage ")]
    assert [m.split()[1] for m in first] == [
        "load",
        "capture",
        "train",
        "evaluate",
        "dashboards",
        "moderation",
    ]

    caplog.clear()
    with one_thread():
        demo.main([*argv[:-4], "--no-serve"])
    again = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stage ")]
    reused = {m.split()[1] for m in again if "reused" in m}
    assert reused == {"capture", "train", "evaluate", "dashboards"}, again
