"""One trainer, every architecture: JumpReLU, BatchTopK, Matryoshka and transcoders trained by
``SAETrainer`` and ``g2interp train-sae``, saved in SAELens's format, resumed bit for bit."""

from __future__ import annotations

import warnings

import pytest
import torch

from g2interp import cli
from g2interp.sae import JumpReLUSAE, SAETrainer, SAETrainingConfig, evaluate_sae
from tests.activations.act_helpers import CORPUS, save_hf_folder
from tests.tiny import one_thread

TRANSCODER = {"hook_name": "blocks.1.hook_mlp_in", "hook_name_out": "blocks.1.hook_mlp_out"}
ARCHITECTURES = {
    "jumprelu": {"target_l0": 6.0, "aux_coefficient": 1 / 32},
    "batchtopk": {"architecture": "batchtopk", "target_l0": 6.0, "aux_coefficient": 1 / 32},
    "matryoshka": {"architecture": "matryoshka", "target_l0": 6.0, "matryoshka_widths": (16, 32, 64)},
    "jumprelu-transcoder": {"target_l0": 6.0, **TRANSCODER, "d_out": 12},
    "jumprelu-skip-transcoder": {"target_l0": 6.0, **TRANSCODER, "d_out": 12, "affine_skip": True},
    "batchtopk-skip-transcoder": {
        "architecture": "batchtopk",
        "target_l0": 6.0,
        **TRANSCODER,
        "d_out": 12,
        "affine_skip": True,
    },
}


@pytest.fixture(autouse=True)
def single_thread():
    with one_thread():
        yield


def cfg(**overrides) -> SAETrainingConfig:
    base = dict(
        d_in=16,
        d_sae=64,
        batch_size=128,
        total_tokens=128 * 40,
        lr=3e-3,
        lr_warmup_steps=2,
        l0_coefficient=5e-2,
        topk_threshold_lr=0.1,  # the running threshold settles within the 40 steps
        l0_warmup_steps=0,
        b_dec_init="mean",
        n_norm_batches=2,
        dead_window_steps=5,
        checkpoint_every=10,
        log_every=10,
    )
    return SAETrainingConfig(**{**base, **overrides})


def data(n: int, transcoder: bool, seed: int = 0) -> list:
    """Sparse codes over 48 directions plus an offset; a transcoder's target is a fixed linear map of
    its input through a ReLU (something a sparse dictionary with a skip can learn)."""
    fixed = torch.Generator().manual_seed(1234)  # one distribution; ``seed`` draws its tokens
    dirs = torch.randn(48, 16, generator=fixed)
    mix = torch.randn(16, 12, generator=fixed) / 4
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        codes = torch.rand(128, 48, generator=gen) * (torch.rand(128, 48, generator=gen) < 0.1)
        x = codes @ dirs * 5 + 20.0 * (torch.arange(16) == 3)
        out.append((x, torch.relu(x @ mix) + 0.5 * x[:, :12]) if transcoder else x)
    return out


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_each_architecture_trains_saves_and_loads_in_saelens(name, tmp_path):
    c = cfg(**ARCHITECTURES[name])
    batches = data(40, c.is_transcoder)
    sae = SAETrainer(c, None, batches, checkpoint_dir=tmp_path, progress=False).fit()[0]
    held_out = data(2, c.is_transcoder, seed=1)
    ev = evaluate_sae(sae, held_out)
    assert ev.fvu < 0.5, ev.fvu
    # top-k: k at the running threshold; JumpReLU: near its target (40 steps are too few to settle on it:
    # tests/sae/test_sae_target_l0.py checks the landing)
    assert 3.0 < ev.l0 < 18.0, ev.l0
    loaded = JumpReLUSAE.load(tmp_path / "sae_0")
    assert loaded.cfg.metadata["architecture"] == c.architecture
    assert loaded.cfg.is_transcoder == c.is_transcoder and loaded.cfg.affine_skip == c.affine_skip
    x = held_out[0][0] if c.is_transcoder else held_out[0]
    assert torch.equal(loaded(x), sae(x))
    from sae_lens import SAE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SAE.load_from_disk(str(tmp_path / "sae_0"))
    torch.testing.assert_close(theirs(x), sae(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["batchtopk", "matryoshka", "jumprelu-skip-transcoder"])
def test_resume_is_bitwise_equal(name, tmp_path):
    class Stop(Exception):
        pass

    def stop_at_15(trainer, metrics):
        if metrics.step == 15:
            raise Stop

    c = cfg(**ARCHITECTURES[name], total_tokens=128 * 30)
    batches = data(30, c.is_transcoder)
    reference = SAETrainer(c, None, batches, progress=False).fit()[0]
    with pytest.raises(Stop):
        SAETrainer(c, None, batches, callbacks=[stop_at_15], checkpoint_dir=tmp_path, progress=False).fit()
    resumed = SAETrainer(c, None, batches, checkpoint_dir=tmp_path, progress=False).fit()[0]
    for key, tensor in reference.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[key]), key


def test_a_transcoder_refuses_single_tensors_and_misshapen_targets():
    c = cfg(**ARCHITECTURES["jumprelu-transcoder"])
    x = torch.randn(128, 16)
    with pytest.raises(TypeError, match=r"transcoder trains on \(inputs, targets\) pairs"):
        SAETrainer(c, None, [x] * 40, progress=False).fit()
    with pytest.raises(ValueError, match=r"targets at step 0 has shape \(128, 16\), expected \(128, 12\)"):
        SAETrainer(c, None, [(x, x)] * 40, progress=False).fit()


@pytest.mark.slow
def test_train_sae_cli_trains_a_skip_transcoder_and_a_matryoshka_sae_from_one_store(tmp_path, capsys, caplog):
    """``--transcoder``: reads hook_mlp_in, reconstructs hook_mlp_out of the same layer; evaluated on the
    MLP output and with the MLP replaced in the model."""
    model = save_hf_folder(tmp_path / "model")
    store = tmp_path / "S"
    mlp_in, mlp_out, resid = "blocks.1.hook_mlp_in", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"
    common = ["--no-progress", "--device", "cpu", "--threads", "1"]
    contexts = ["--context-length", "32", "--max-contexts", "40", "--eval-contexts", "8"]
    argv = ["capture", "--model", str(model), "--data", str(CORPUS), "--out", str(store)]
    assert cli.main([*argv, "--hooks", mlp_in, mlp_out, resid, *contexts, *common]) == 0
    training = ["--d-sae", "64", "--batch-size", "64", "--epochs", "2", "--n-norm-batches", "2"]
    training += ["--delta-loss-contexts", "2", "--target-l0", "6"]
    out = tmp_path / "T"
    argv = [
        "train-sae",
        "--store",
        str(store),
        "--hook",
        mlp_in,
        "--transcoder",
        "--affine-skip",
        "--out",
        str(out),
    ]
    capsys.readouterr()
    assert cli.main([*argv, *training, *common]) == 0
    folder = out / f"{mlp_in}-to-hook_mlp_out" / "sae_0"
    sae = JumpReLUSAE.load(folder)
    assert (sae.cfg.hook_name, sae.cfg.hook_name_out, sae.cfg.affine_skip) == (mlp_in, mlp_out, True)
    evaluation = (folder / "eval.json").read_text()
    assert '"fvu"' in evaluation and (folder / "delta_lm_loss.json").is_file()
    argv = ["train-sae", "--store", str(store), "--hook", resid, "--architecture", "matryoshka"]
    argv += ["--matryoshka-widths", "16", "32", "64", "--out", str(tmp_path / "M")]
    assert cli.main([*argv, *training, *common]) == 0
    saved = JumpReLUSAE.load(tmp_path / "M" / resid / "sae_0").cfg.metadata
    assert saved["architecture"] == "matryoshka" and saved["matryoshka_widths"] == [16, 32, 64]
    bad = ["train-sae", "--store", str(store), "--hook", resid, "--transcoder", "--out", str(tmp_path / "X")]
    assert cli.main([*bad, *common]) == 2  # bad input is refused with the valid form named
    assert "blocks.L.hook_mlp_in" in caplog.text
