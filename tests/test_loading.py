"""Checkpoint loading: HF folders (sharded, multimodal), GGUF files, hub ids, and every failure mode."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from g2interp import CheckpointError, load_model
from g2interp.loading.hf import HF_NAME_MAP
from g2interp.loading.weights import expand_name_map
from tests.conftest import make_hf_model


@pytest.fixture(scope="module")
def gemma3_folder(tmp_path_factory):
    hf = make_hf_model("gemma3", seed=3)
    folder = tmp_path_factory.mktemp("g3")
    hf.save_pretrained(folder)
    return hf, folder


def _copy(folder, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(folder, dst)
    return dst


def test_sharded_folder_loads(gemma3_folder, tmp_path):
    hf, _folder = gemma3_folder
    dst = tmp_path / "sharded"
    hf.save_pretrained(dst, max_shard_size="20KB")
    assert (dst / "model.safetensors.index.json").exists()
    tokens = torch.randint(3, 96, (1, 9))
    with torch.no_grad():
        ref = hf(tokens).logits
    assert torch.allclose(load_model(dst, device="cpu")(tokens), ref, atol=1e-4)


def test_missing_shard_named(gemma3_folder, tmp_path):
    hf, _ = gemma3_folder
    dst = tmp_path / "sharded"
    hf.save_pretrained(dst, max_shard_size="20KB")
    shard = sorted(dst.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=shard.name):
        load_model(dst, device="cpu")


def test_truncated_safetensors_named(gemma3_folder, tmp_path):
    dst = _copy(gemma3_folder[1], tmp_path)
    weights = dst / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(dst, device="cpu")


def test_missing_and_unexpected_tensors(gemma3_folder, tmp_path):
    dst = _copy(gemma3_folder[1], tmp_path)
    state = load_file(dst / "model.safetensors")
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, dst / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing tensors blocks\.1\.mlp\.up_proj\.weight"):
        load_model(dst, device="cpu")
    state["model.layers.1.mlp.up_proj.weight"] = torch.zeros(80, 48)
    state["model.layers.1.mlp.extra.weight"] = torch.zeros(3)
    save_file(state, dst / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.layers.1.mlp.extra.weight'"):
        load_model(dst, device="cpu")


def test_shape_mismatch_named(gemma3_folder, tmp_path):
    dst = _copy(gemma3_folder[1], tmp_path)
    state = load_file(dst / "model.safetensors")
    state["model.layers.0.self_attn.q_proj.weight"] = torch.zeros(81, 48)
    save_file(state, dst / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"q_proj.weight' has shape \(81, 48\), the config implies \(80, 48\)"
    ):
        load_model(dst, device="cpu")


def test_other_architecture_refused(gemma3_folder, tmp_path):
    dst = _copy(gemma3_folder[1], tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "llama"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 'llama'"):
        load_model(dst, device="cpu")


def test_multimodal_gemma3_folder_uses_language_model(gemma3_folder, tmp_path):
    hf, folder = gemma3_folder
    dst = tmp_path / "mm"
    dst.mkdir()
    text_cfg = json.loads((folder / "config.json").read_text())
    (dst / "config.json").write_text(json.dumps({"model_type": "gemma3", "text_config": text_cfg}))
    state = {
        k.replace("model.", "model.language_model.", 1): v
        for k, v in load_file(folder / "model.safetensors").items()
    }
    state["model.vision_tower.vision_model.embeddings.patch_embedding.weight"] = torch.zeros(4, 3)
    save_file(state, dst / "model.safetensors")
    tokens = torch.randint(3, 96, (1, 7))
    with torch.no_grad():
        ref = hf(tokens).logits
    assert torch.allclose(load_model(dst, device="cpu")(tokens), ref, atol=1e-4)


def test_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="neither a model folder"):
        load_model(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)


def test_hub_id_not_cached_names_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        load_model("google/gemma-2-2b-not-here", device="cpu")


# ---------------------------------------------------------------- GGUF
def _write_gguf(hf, path, quantize_mlp=True):
    """Write a transformers model as llama.cpp would (norms stored as 1 + w, Q8_0 MLP weights)."""
    import gguf

    from g2interp.loading.gguf import GGUF_NAME_MAP

    cfg = hf.config
    arch = "gemma3"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(cfg.head_dim)
    writer.add_value_length(cfg.head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(1_000_000.0)
    writer.add_sliding_window(cfg.sliding_window)
    writer.add_uint32(f"{arch}.vocab_size", cfg.vocab_size)
    ours_to_gguf = {v: k for k, v in expand_name_map(GGUF_NAME_MAP, cfg.num_hidden_layers).items()}
    hf_to_ours = expand_name_map(HF_NAME_MAP, cfg.num_hidden_layers)
    for name, tensor in hf.state_dict().items():
        if name == "lm_head.weight":
            continue
        gname = ours_to_gguf[hf_to_ours[name]]
        array = tensor.float().numpy()
        if gname.endswith("norm.weight"):
            array = array + 1.0
        if quantize_mlp and gname.endswith(("ffn_up.weight", "ffn_gate.weight")):
            q = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(gname, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    # head_dim 256: GGUF has no query_pre_attn_scalar, and transformers' GGUF path assumes 256
    layer_types = ["sliding_attention"] * 5 + ["full_attention"]
    hf = make_hf_model(
        "gemma3",
        seed=5,
        hidden_size=64,
        intermediate_size=128,
        head_dim=256,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_hidden_layers=6,
        layer_types=layer_types,
        query_pre_attn_scalar=256,
    )
    folder = tmp_path_factory.mktemp("gguf")
    path = folder / "tiny.gguf"
    _write_gguf(hf, path)
    return path


def test_gguf_matches_transformers_gguf_load(tiny_gguf):
    from transformers import AutoModelForCausalLM

    ref_model = AutoModelForCausalLM.from_pretrained(
        str(tiny_gguf.parent), gguf_file=tiny_gguf.name, dtype=torch.float32
    ).eval()
    model = load_model(tiny_gguf, device="cpu")
    assert [t.value for t in model.cfg.layer_types] == list(ref_model.config.layer_types)
    tokens = torch.randint(3, 96, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = ref_model(tokens).logits
    assert torch.allclose(model(tokens), ref, atol=1e-4, rtol=0)


def test_gguf_truncated_or_corrupt(tiny_gguf, tmp_path):
    data = tiny_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-4096])
    with pytest.raises(CheckpointError, match="cut.gguf.*truncated"):
        load_model(cut, device="cpu")
    header_only = tmp_path / "head.gguf"
    header_only.write_bytes(data[:64])
    with pytest.raises(CheckpointError, match="head.gguf"):
        load_model(header_only, device="cpu")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(CheckpointError, match="not a GGUF file"):
        load_model(junk, device="cpu")


def test_gguf_config_overrides_validated(tiny_gguf):
    with pytest.raises(ValueError, match="unknown config overrides"):
        load_model(tiny_gguf, device="cpu", config_overrides={"nonsense": 1})
    model = load_model(tiny_gguf, device="cpu", config_overrides={"query_pre_attn_scalar": 100.0})
    assert model.cfg.query_pre_attn_scalar == 100.0


def test_fused_weights_hold_checkpoint_matrices(gemma3_folder):
    hf, folder = gemma3_folder
    model = load_model(folder, device="cpu")
    attn, mlp = model.blocks[1].attn, model.blocks[1].mlp
    ref = hf.model.layers[1]
    assert torch.equal(attn.W_Q, ref.self_attn.q_proj.weight)
    assert torch.equal(attn.W_K, ref.self_attn.k_proj.weight)
    assert torch.equal(attn.W_V, ref.self_attn.v_proj.weight)
    assert torch.equal(mlp.W_gate, ref.mlp.gate_proj.weight)
    assert torch.equal(mlp.W_in, ref.mlp.up_proj.weight)


def test_hub_id_resolved_from_local_cache(gemma3_folder, tmp_path, monkeypatch):
    """A hub id loads offline from a Hugging Face cache laid out as the hub client writes it."""
    import huggingface_hub.constants as hc

    hf, folder = gemma3_folder
    repo = tmp_path / "models--google--tiny-gemma"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    model = load_model("google/tiny-gemma", device="cpu")
    tokens = torch.randint(3, 96, (1, 6))
    with torch.no_grad():
        assert torch.allclose(model(tokens), hf(tokens).logits, atol=1e-4)
