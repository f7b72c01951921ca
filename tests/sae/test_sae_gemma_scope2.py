"""Gemma Scope 2 import: folders written here (SAEs on resid_post and attn_out, transcoders with and
without an affine skip, with and without config.json) against a NumPy reference and against SAELens's
own Gemma 3 loader; malformed folders give clear errors; Gemma Scope 1 goes through the same entry."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file

from g2interp.sae import JumpReLUSAE, SAEFormatError, gemma_scope_hooks, load_gemma_scope

D_IN, D_SAE, D_OUT = 10, 24, 7


def gs2_arrays(d_in=D_IN, d_sae=D_SAE, d_out=D_OUT, skip=False, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "w_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32),
        "w_dec": rng.normal(size=(d_sae, d_out)).astype(np.float32),
        "b_enc": rng.normal(size=d_sae).astype(np.float32) * 0.1,
        "b_dec": rng.normal(size=d_out).astype(np.float32),
        "threshold": rng.uniform(0, 1, size=d_sae).astype(np.float32),
    }
    if skip:
        arrays["affine_skip_connection"] = rng.normal(size=(d_in, d_out)).astype(np.float32)  # [d_in, d_out]
    return arrays


def write_folder(root: Path, name: str, arrays: dict[str, np.ndarray], config: dict | None = None) -> Path:
    """A Gemma Scope 2 SAE folder, ``root/<site>/<sae>`` as the release lays them out."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    save_file(arrays, folder / "params.safetensors")
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def reference(arrays: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latents and output in NumPy: JumpReLU, decoder, plus ``x A`` with A stored [d_in, d_out]."""
    pre = x @ arrays["w_enc"] + arrays["b_enc"]
    acts = pre * (pre > arrays["threshold"])
    out = acts @ arrays["w_dec"] + arrays["b_dec"]
    if "affine_skip_connection" in arrays:
        out = out + x @ arrays["affine_skip_connection"]
    return acts, out


def assert_matches_reference(sae: JumpReLUSAE, arrays: dict[str, np.ndarray], x: np.ndarray) -> None:
    acts, out = reference(arrays, x)
    assert 0 < (acts > 0).mean() < 1
    with torch.no_grad():
        np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).numpy(), acts, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(sae(torch.from_numpy(x)).numpy(), out, rtol=1e-5, atol=1e-4)


def inputs(n: int = 32, d: int = D_IN) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, d)).astype(np.float32) * 2


def test_resid_post_sae_with_config(tmp_path):
    arrays = gs2_arrays(d_out=D_IN)
    config = {
        "architecture": "jump_relu",
        "model_name": "gemma-v3-270m-pt",
        "hf_hook_point_in": "model.layers.3.output",
    }
    folder = write_folder(tmp_path, "resid_post/layer_3_width_16k_l0_small", arrays, config)
    sae = load_gemma_scope(folder)
    assert sae.cfg.hook_name == "blocks.3.hook_resid_post" and not sae.cfg.is_transcoder
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.d_out) == (D_IN, D_SAE, D_IN)
    assert sae.cfg.model_name == "gemma-v3-270m-pt" and not sae.cfg.apply_b_dec_to_input
    assert sae.cfg.metadata == {"source": "gemma_scope_2", "hf_hook_name": "model.layers.3.output"}
    assert_matches_reference(sae, arrays, inputs())
    # the same through JumpReLUSAE.from_gemma_scope, given the file; model_name= wins over config.json's
    other = JumpReLUSAE.from_gemma_scope(folder / "params.safetensors", model_name="gemma-3-270m")
    assert other.cfg.model_name == "gemma-3-270m" and torch.equal(other.W_dec, sae.W_dec)


def test_attn_out_sae_reads_hook_z_with_heads_flattened(tmp_path):
    n_heads, d_head = 2, 5
    arrays = gs2_arrays(d_out=D_IN, seed=1)
    folder = write_folder(tmp_path, "attn_out/layer_2_width_16k_l0_big", arrays)  # no config.json
    sae = load_gemma_scope(folder)
    assert sae.cfg.hook_name == "blocks.2.attn.hook_z" and sae.cfg.reshape_hook_z
    x = inputs()
    assert_matches_reference(sae, arrays, x)
    x_heads = torch.from_numpy(x).reshape(-1, n_heads, d_head)  # [B, n_heads, d_head], as hook_z gives
    with torch.no_grad():
        np.testing.assert_allclose(
            sae(x_heads).reshape(-1, D_IN).numpy(), reference(arrays, x)[1], rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("skip", [False, True], ids=["plain", "affine"])
@pytest.mark.parametrize("with_config", [False, True], ids=["no-config", "config"])
def test_transcoder(tmp_path, skip, with_config):
    arrays = gs2_arrays(skip=skip, seed=2)
    config = None
    if with_config:
        config = {
            "architecture": "jump_relu",
            "affine_connection": skip,
            "model_name": "gemma-v3-270m-pt",
            "hf_hook_point_in": "model.layers.5.pre_feedforward_layernorm.output",
            "hf_hook_point_out": "model.layers.5.post_feedforward_layernorm.output",
        }
    name = "transcoder/layer_5_width_16k_l0_small" + ("_affine" if skip else "")
    folder = write_folder(tmp_path, name, arrays, config)
    sae = load_gemma_scope(folder)
    cfg = sae.cfg
    assert cfg.is_transcoder and cfg.affine_skip == skip
    assert (cfg.hook_name, cfg.hook_name_out) == ("blocks.5.hook_mlp_in", "blocks.5.hook_mlp_out")
    assert (cfg.d_in, cfg.d_sae, cfg.d_out) == (D_IN, D_SAE, D_OUT)
    if skip:  # W_skip [d_out, d_in] is the stored [d_in, d_out] transposed
        assert torch.equal(sae.W_skip, torch.from_numpy(arrays["affine_skip_connection"]).T)
    assert_matches_reference(sae, arrays, inputs())
    assert ("hf_hook_name_out" in cfg.metadata) == with_config

    # saved in SAELens's format and read back (ours and SAELens's) with the same outputs
    sae.save(tmp_path / "saved")
    x = torch.from_numpy(inputs())
    back = JumpReLUSAE.load(tmp_path / "saved")
    assert back.cfg == cfg
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sae_lens import SAE

        theirs = SAE.load_from_disk(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(back(x), sae(x)) and torch.equal(theirs(x), sae(x))


@pytest.mark.parametrize(
    ("name", "skip"),
    [
        ("resid_post/layer_3_width_16k_l0_small", False),
        ("mlp_out/layer_1_width_16k_l0_big", False),
        ("transcoder/layer_5_width_16k_l0_small", False),
        ("transcoder/layer_5_width_16k_l0_small_affine", True),
    ],
)
def test_parity_with_saelens_gemma_3_loader(tmp_path, monkeypatch, name, skip):
    """SAELens's ``gemma_3_sae_huggingface_loader`` on the same folder (its hub calls pointed at disk)
    builds the same architecture, hooks and outputs."""
    from sae_lens import SAE
    from sae_lens.loading import pretrained_sae_loaders as loaders

    arrays = gs2_arrays(d_out=D_OUT if "transcoder" in name else D_IN, skip=skip, seed=3)
    folder = write_folder(tmp_path, name, arrays)

    def download(repo_id, filename, subfolder=None, force_download=False, **kwargs):
        path = tmp_path / (f"{subfolder}/{filename}" if subfolder else filename)
        if not path.is_file():
            raise loaders.EntryNotFoundError(str(path))
        return str(path)

    def shapes(repo_id, filename):
        with safe_open(tmp_path / filename, "pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    monkeypatch.setattr(loaders, "hf_hub_download", download)
    monkeypatch.setattr(loaders, "get_safetensors_tensor_shapes", shapes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs, their_cfg, _ = SAE.from_pretrained_with_cfg_and_sparsity(
            "google/gemma-scope-2-270m-pt", name, converter=loaders.gemma_3_sae_huggingface_loader
        )
    ours = load_gemma_scope(folder)
    assert ours.saelens_cfg_dict()["architecture"] == their_cfg["architecture"]
    assert ours.cfg.hook_name == their_cfg["metadata"]["hook_name"]
    assert ours.cfg.hook_name_out == (their_cfg["metadata"].get("hook_name_out") or "")
    assert ours.cfg.d_out == their_cfg.get("d_out", D_IN)
    x = torch.from_numpy(inputs())
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_hook_inference_from_folder_names():
    assert gemma_scope_hooks("resid_post/layer_12_width_262k_l0_medium") == ("blocks.12.hook_resid_post", "")
    assert gemma_scope_hooks("/cache/snapshots/abc/mlp_out/layer_0_width_16k") == (
        "blocks.0.hook_mlp_out",
        "",
    )
    assert gemma_scope_hooks("transcoder_all/layer_7_width_16k_l0_big_affine") == (
        "blocks.7.hook_mlp_in",
        "blocks.7.hook_mlp_out",
    )
    # only the last two components count: a parent folder named "transcoder..." does not
    assert gemma_scope_hooks("/data/transcoder_runs/attn_out/layer_4_x").hook_name == "blocks.4.attn.hook_z"
    with pytest.raises(ValueError, match="no 'layer_<n>'"):
        gemma_scope_hooks("resid_post/width_16k")
    with pytest.raises(ValueError, match="names none of resid_post, attn_out, mlp_out, transcoder"):
        gemma_scope_hooks("other/layer_3_width_16k")
    with pytest.raises(ValueError, match="cross-layer transcoder"):
        gemma_scope_hooks("clt/layer_3_width_16k")


def test_hook_name_overrides_the_folder_name(tmp_path):
    arrays = gs2_arrays(seed=4)
    folder = write_folder(tmp_path, "my_transcoders/tc4", arrays)  # nothing to infer from
    with pytest.raises(SAEFormatError, match="no 'layer_<n>'.*pass hook_name="):
        load_gemma_scope(folder)
    sae = load_gemma_scope(folder, hook_name="blocks.4.hook_mlp_in")  # an MLP input: a transcoder
    assert (sae.cfg.hook_name_out, sae.cfg.d_out) == ("blocks.4.hook_mlp_out", D_OUT)
    assert_matches_reference(sae, arrays, inputs())
    sae_arrays = gs2_arrays(d_out=D_IN, seed=4)
    folder = write_folder(tmp_path, "resid_post/layer_3_width_16k", sae_arrays)
    assert (
        load_gemma_scope(folder, hook_name="blocks.9.hook_resid_post").cfg.hook_name
        == "blocks.9.hook_resid_post"
    )
    with pytest.raises(ValueError, match="a transcoder reads an MLP's input"):
        load_gemma_scope(
            write_folder(tmp_path, "x/y", gs2_arrays(skip=True)), hook_name="blocks.1.hook_resid_post"
        )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda a: a.pop("threshold"), r"lacks key\(s\) \['threshold'\]"),
        (
            lambda a: a.update(b_enc=np.zeros(25, np.float32)),
            r"b_enc has shape \(25,\), expected \(24,\) \(d_sae\)",
        ),
        (
            lambda a: a.update(affine_skip_connection=np.zeros((D_OUT, D_IN), np.float32)),
            r"affine_skip_connection has shape \(7, 10\), expected \(10, 7\) \(d_in, d_out\)",
        ),
        (lambda a: a.update(b_dec=np.arange(D_OUT)), r"b_dec has dtype torch.int64, expected a float"),
        (lambda a: a["threshold"].__setitem__(3, np.inf), r"threshold holds NaN or inf"),
        (lambda a: a.update(w_enc=np.zeros(D_IN, np.float32)), r"must be matrices"),
    ],
    ids=["missing", "wrong-shape", "transposed-skip", "int", "inf", "vector-w_enc"],
)
def test_malformed_params(tmp_path, edit, message):
    arrays = gs2_arrays(skip=True)
    edit(arrays)
    folder = write_folder(tmp_path, "transcoder/layer_1_width_16k_affine", arrays)
    with pytest.raises(SAEFormatError, match=message):
        load_gemma_scope(folder)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"architecture": "relu"}, r"architecture is 'relu'; .* are 'jump_relu'"),
        ({"model_name": "gemma-v3-270m-pt"}, r"architecture is None"),
        ({"architecture": "jump_relu", "affine_connection": True}, r"affine_connection=True but .* has no"),
        (
            {"architecture": "jump_relu", "affine_connection": "yes"},
            r"affine_connection must be true or false",
        ),
        (
            {
                "architecture": "jump_relu",
                "hf_hook_point_in": "model.layers.2.pre_feedforward_layernorm.output",
            },
            r"hf_hook_point_in=.* is blocks\.2\.hook_mlp_in, but the folder name says blocks\.1\.hook_mlp_in",
        ),
        ([1, 2], r"must hold a JSON object"),
    ],
    ids=["architecture", "no-architecture", "affine-without-key", "affine-not-bool", "hook-mismatch", "list"],
)
def test_malformed_config(tmp_path, config, message):
    folder = write_folder(tmp_path, "transcoder/layer_1_width_16k", gs2_arrays(), config)
    with pytest.raises(SAEFormatError, match=message):
        load_gemma_scope(folder)


def test_other_bad_folders(tmp_path, caplog):
    arrays = gs2_arrays(d_out=D_IN)
    folder = write_folder(tmp_path, "resid_post/layer_1", {**arrays, "extra": np.zeros(3, np.float32)})
    with caplog.at_level(logging.WARNING, logger="g2interp.sae.gemma_scope"):
        sae = load_gemma_scope(folder)
    assert "ignoring unknown key 'extra'" in caplog.text
    assert_matches_reference(sae, arrays, inputs())

    # an SAE folder with a skip connection or a d_out of its own describes a transcoder
    folder = write_folder(tmp_path, "resid_post/layer_2", gs2_arrays(skip=True))
    with pytest.raises(SAEFormatError, match="describes a transcoder: set hook_name_out"):
        load_gemma_scope(folder)
    (folder / "params.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SAEFormatError, match="cannot read .* as safetensors"):
        load_gemma_scope(folder)
    with pytest.raises(FileNotFoundError, match="neither params.safetensors .* nor params.npz"):
        load_gemma_scope(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_gemma_scope(tmp_path / "nope.safetensors")
    np.savez(folder / "params.npz", x=np.zeros(1))
    with pytest.raises(SAEFormatError, match="holds both"):
        load_gemma_scope(folder)


def test_gemma_scope_1_through_the_same_entry_point(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {
        "W_enc": rng.normal(size=(D_IN, D_SAE)).astype(np.float32),
        "W_dec": rng.normal(size=(D_SAE, D_IN)).astype(np.float32),
        "b_enc": rng.normal(size=D_SAE).astype(np.float32) * 0.1,
        "b_dec": rng.normal(size=D_IN).astype(np.float32),
        "threshold": rng.uniform(0, 1, size=D_SAE).astype(np.float32),
    }
    folder = tmp_path / "layer_3" / "width_16k" / "average_l0_40"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **arrays)
    with pytest.raises(ValueError, match="Gemma Scope 1 file, whose folders do not name their hook"):
        load_gemma_scope(folder)
    sae = load_gemma_scope(folder, hook_name="blocks.3.hook_resid_post", model_name="gemma-2-2b")
    assert sae.cfg.metadata == {"source": "gemma_scope"} and not sae.cfg.is_transcoder
    ours = {k.lower() if k.startswith("W") else k: v for k, v in arrays.items()}
    assert_matches_reference(sae, ours, inputs())
