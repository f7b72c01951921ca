"""``g2interp capture`` flags: generated from CaptureConfig, run end to end on a tiny model folder."""

from __future__ import annotations

import logging

import pytest
from act_helpers import HOOKS, save_hf_folder

from g2interp import load_model
from g2interp.activations import ActivationStore, CaptureConfig, capture
from g2interp.activations.cli import build_parser, main, split_names
from g2interp.cli_config import config_from_args, field_docs


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_hf_folder(tmp_path_factory.mktemp("tiny-hf"))


def _argv(model_folder, corpus, out, *extra):
    return [
        "--model",
        str(model_folder),
        "--data",
        str(corpus),
        "--out",
        str(out),
        "--context-length",
        "32",
        "--max-contexts",
        "9",
        "--contexts-per-shard",
        "4",
        "--eval-contexts",
        "2",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]


def parse_config(argv):
    args = build_parser().parse_args(argv)
    return config_from_args(CaptureConfig, args, hooks=split_names(args.hooks))


def test_every_field_is_a_flag_with_its_docstring():
    help_text = " ".join(build_parser().format_help().split())
    for name, doc in field_docs(CaptureConfig).items():
        assert "--" + name.replace("_", "-") in help_text
        assert doc[:40] in help_text
    cfg = parse_config(
        [
            "--data",
            "d",
            "--out",
            "o",
            "--hooks",
            "a.b,c.d",
            "e.f",
            "--exclude",
            "bos",
            "eos",
            "--dtype",
            "bfloat16",
            "--no-shuffle-documents",
            "--max-contexts",
            "300",
        ]
    )
    assert cfg.hooks == ("a.b", "c.d", "e.f") and cfg.exclude == ("bos", "eos") and cfg.dtype == "bfloat16"
    assert (
        cfg.shuffle_documents is False
        and cfg.max_contexts == 300
        and cfg.eval_contexts == 64
        and cfg.context_length == 1024
    )
    with pytest.raises(ValueError, match="batch_contexts must be a positive integer"):
        parse_config(["--data", "d", "--out", "o", "--hooks", "h", "--batch-contexts", "0"])
    with pytest.raises(SystemExit):
        parse_config(["--data", "d", "--out", "o", "--hooks", "h", "--dtype", "int8"])


def test_main_captures_what_the_api_captures(model_folder, corpus, tmp_path):
    out = tmp_path / "cli"
    assert main(_argv(model_folder, corpus, out, "--hooks", f"{HOOKS[0]},{HOOKS[2]}")) == 0
    store = ActivationStore(out)
    assert store.manifest.complete and store.hooks == [HOOKS[0], HOOKS[2]]
    api = capture(
        load_model(model_folder, device="cpu"),
        CaptureConfig(
            data=str(corpus),
            hooks=(HOOKS[0], HOOKS[2]),
            out=str(tmp_path / "api"),
            context_length=32,
            max_contexts=9,
            contexts_per_shard=4,
            eval_contexts=2,
            progress=False,
        ),
    )
    assert [r.files for r in api.manifest.shards] == [r.files for r in store.shards]  # same bytes
    assert (
        main(
            _argv(
                model_folder, corpus, out, "--hooks", HOOKS[0], "--hooks", HOOKS[2], "--batch-contexts", "2"
            )
        )
        == 0
    )  # resume


def test_main_refusals_exit_2_with_the_reason(model_folder, corpus, tmp_path, caplog):
    out = tmp_path / "cli"
    with caplog.at_level(logging.ERROR):
        assert main(_argv(model_folder, corpus, out, "--hooks", "blocks.0.hook_resid_pots")) == 2
    assert "closest valid names" in caplog.text and not out.exists()
    assert main(_argv(model_folder, corpus, out, "--hooks", HOOKS[0])) == 0
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(_argv(model_folder, corpus, out, "--hooks", HOOKS[0], "--seed", "4")) == 2
    assert "seed: store has 0, this run asks for 4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(_argv(model_folder, tmp_path / "missing.jsonl", tmp_path / "x", "--hooks", HOOKS[0])) == 2
    assert "does not exist" in caplog.text
