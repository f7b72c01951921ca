"""``g2interp train-sae``: flags from the configs, the run on a tiny model, and a real run on the embedded one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from g2interp.sae import JumpReLUSAE, SAETrainingConfig
from g2interp.sae.cli import build_parser, config_from_args, main
from g2interp.sae.constants import DELTA_LOSS_RESULTS_FILE, EVAL_RESULTS_FILE, SAE_CFG_FILE
from g2interp.sae.run import RUN_CONFIG_FILE, TrainSAEConfig, prepare_contexts, train_sae
from tests.sae.test_sae_evaluate import tiny_model

FIXTURE_CORPUS = Path(__file__).parents[1] / "fixtures" / "sae_corpus.jsonl"


class CharTokenizer:
    """Characters to ids 3..63 (the tiny model's vocabulary is 64; 0-2 are pad, EOS, BOS)."""

    bos_token_id, eos_token_id, pad_token_id = 2, 1, 0

    def encode_batch(self, texts, prepend_bos=True):
        return [([2] if prepend_bos else []) + [3 + ord(c) % 61 for c in t] for t in texts]


def write_corpus(path: Path, n_docs: int = 40) -> Path:
    gen = torch.Generator().manual_seed(0)
    words = ["alpha", "beta", "gamma", "delta", "one", "two", "three", "sea", "sky", "stone"]
    with open(path, "w") as f:
        for _ in range(n_docs):
            idx = torch.randint(0, len(words), (60,), generator=gen).tolist()
            f.write(json.dumps({"text": " ".join(words[i] for i in idx)}) + "\n")
    return path


def test_flags_come_from_both_configs():
    args = build_parser().parse_args(
        [
            "--out",
            "o",
            "--d-sae",
            "64",
            "--total-tokens",
            "4096",
            "--target-l0",
            "8",
            "--adam-betas",
            "0.5",
            "0.9",
        ]
    )
    cfg = config_from_args(args, d_in=32, reshape_hook_z=False, model_name="m")
    assert isinstance(cfg, TrainSAEConfig) and isinstance(cfg.training, SAETrainingConfig)
    assert cfg.training.d_in == 32 and cfg.training.d_sae == 64 and cfg.training.target_l0 == 8.0
    assert cfg.training.adam_betas == (0.5, 0.9) and cfg.training.hook_name == cfg.hook_name
    assert cfg.training.lr == SAETrainingConfig(d_in=1, d_sae=1, total_tokens=4096).lr  # defaults kept
    assert cfg.context_length == 1024 and cfg.epochs == 1
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", "o", "--total-tokens", "4096"])  # --d-sae is required
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--out", "o", "--d-sae", "8", "--total-tokens", "9", "--b-dec-init", "x"])
    help_text = build_parser().format_help()
    assert (
        "--l0-controller-rate" in help_text and "--eval-contexts" in help_text and "--d-in" not in help_text
    )


def test_config_validation():
    training = SAETrainingConfig(d_in=4, d_sae=8, total_tokens=64, batch_size=8, hook_name="blocks.0.hook_z")
    with pytest.raises(ValueError, match="differs from hook_name"):
        TrainSAEConfig(out="o", training=training, hook_name="blocks.1.hook_resid_post")
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        TrainSAEConfig(out="o", training=training, hook_name="blocks.0.hook_z", epochs=0)
    with pytest.raises(ValueError, match="delta_loss_contexts"):
        TrainSAEConfig(out="o", training=training, hook_name="blocks.0.hook_z", eval_contexts=2)


@pytest.mark.parametrize("epochs", [1, 3])
def test_train_sae_on_a_tiny_model_writes_evaluated_sae_and_resumes(tmp_path, epochs):
    model = tiny_model()
    model.tokenizer = CharTokenizer()
    hook = "blocks.0.hook_resid_post"
    training = SAETrainingConfig(
        d_in=32,
        d_sae=64,
        total_tokens=128 * 12,
        batch_size=128,
        lr=3e-3,
        lr_warmup_steps=2,
        target_l0=8.0,
        l0_coefficient=1e-3,
        b_dec_init="mean",
        n_norm_batches=2,
        checkpoint_every=4,
        hook_name=hook,
    )
    cfg = TrainSAEConfig(
        out=str(tmp_path / "run"),
        training=training,
        hook_name=hook,
        corpus=str(write_corpus(tmp_path / "corpus.jsonl")),
        context_length=32,
        epochs=epochs,
        batch_contexts=4,
        buffer_batches=4,
        eval_contexts=3,
        delta_loss_contexts=2,
    )
    result = train_sae(cfg, model=model, progress=False)
    sae_dir = tmp_path / "run" / "sae_0"
    assert result.sae_dir == sae_dir
    for name in (SAE_CFG_FILE, EVAL_RESULTS_FILE, DELTA_LOSS_RESULTS_FILE):
        assert (sae_dir / name).is_file()
    assert json.loads((tmp_path / "run" / RUN_CONFIG_FILE).read_text())["training"]["d_sae"] == 64
    held_out = prepare_contexts(
        model.tokenizer, cfg.corpus, context_length=32, eval_contexts=3, seed=cfg.data_seed
    ).eval
    assert result.eval.n_tokens == int(((held_out != 2) & (held_out != 1)).sum())  # BOS and EOS left out
    loaded = JumpReLUSAE.load(sae_dir)
    assert loaded.cfg.hook_name == hook and loaded.cfg.metadata["training_tokens"] == 128 * 12
    # running it again resumes from the last checkpoint and trains nothing more
    again = train_sae(cfg, model=model, progress=False)
    assert torch.equal(again.sae.W_enc, result.sae.W_enc)


@pytest.mark.slow
def test_train_sae_cli_on_the_embedded_model(tmp_path, capsys):
    """A short run on real activations: resid_post of layer 6, ~9k distinct tokens replayed 12 times."""
    out = tmp_path / "l6"
    target_l0 = 32.0
    code = main(
        [
            "--out", str(out),
            "--corpus", str(FIXTURE_CORPUS),
            "--hook-name", "blocks.6.hook_resid_post",
            "--context-length", "128",
            "--epochs", "12",
            "--eval-contexts", "4",
            "--eval-batch-contexts", "4",
            "--d-sae", "1024",
            "--total-tokens", str(200 * 512),
            "--batch-size", "512",
            "--lr", "1e-3",
            "--lr-warmup-steps", "20",
            "--l0-coefficient", "1e-3",
            "--target-l0", str(target_l0),
            "--b-dec-init", "mean",
            "--n-norm-batches", "4",
            "--dead-window-steps", "100",
            "--log-every", "50",
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    evaluation = json.loads((out / "sae_0" / EVAL_RESULTS_FILE).read_text())
    delta = json.loads((out / "sae_0" / DELTA_LOSS_RESULTS_FILE).read_text())
    assert summary["fvu"] == evaluation["fvu"]
    assert evaluation["fvu"] < 0.5
    assert target_l0 / 2 <= evaluation["l0"] <= target_l0 * 2
    assert delta["ce_sae"] < delta["ce_zero"]  # better than ablating the residual stream
    sae = JumpReLUSAE.load(out / "sae_0")
    assert sae.cfg.hook_name == "blocks.6.hook_resid_post" and sae.cfg.d_in == 640
