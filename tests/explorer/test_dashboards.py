"""Dashboards: built values against brute force, the stored layout read back, the CLI, and the analyses."""

from __future__ import annotations

import json

import pytest
import torch

from g2interp.activations import ContextsConfig, OnTheFlySource
from g2interp.dashboards import (
    DashboardConfig,
    Dashboards,
    DashboardsNotFoundError,
    analyze_text,
    build_dashboards,
    dashboards_current,
    eval_rows,
    explain_probe,
    find_saes,
    logit_effects,
    parse_hook,
)
from g2interp.dashboards.constants import DASHBOARD_MANIFEST_FILE, DASHBOARDS_DIR
from g2interp.sae import JumpReLUSAE, SAEConfig
from tests.explorer.helpers import CORPUS, DEAD, MLP_HOOK, RESID_HOOK, random_sae


def source_of(model, n: int, length: int, **kw) -> OnTheFlySource:
    """``n`` contexts of ``length`` tokens of the small corpus, captured on the fly (none held out)."""
    cfg = dict(
        data=str(CORPUS), context_length=length, max_contexts=n, eval_contexts=0, exclude=("bos", "pad")
    )
    return OnTheFlySource(model, ContextsConfig(**{**cfg, **kw}), batch_contexts=5)


@pytest.fixture(scope="module")
def built(tiny_model, tmp_path_factory):
    """A fresh build (n_top 5, window 3) on 12 contexts of 32 tokens, and what it was built from."""
    sae = random_sae(tiny_model, RESID_HOOK)
    source = source_of(tiny_model, 12, 32, contexts_per_shard=5)
    folder = tmp_path_factory.mktemp("dash")
    cfg = DashboardConfig(n_top=5, window=3, batch_contexts=2, n_logits=4)
    result = build_dashboards(tiny_model, sae, source, folder, cfg, split="train", progress=False)
    return sae, source.contexts(), cfg, result, Dashboards.load(folder)


@torch.no_grad()
def brute_force(model, sae, contexts):
    """Every latent's activation on every kept position [N, L, F] (BOS and padding zeroed)."""
    tokens = contexts.tokens_NL.long()
    x = model.capture(tokens, [sae.cfg.hook_name], contexts.attention_mask(0, len(contexts)))[
        sae.cfg.hook_name
    ]
    keep = contexts.keep_mask(0, len(contexts), ("bos", "pad"))
    return sae.encode(x) * keep[..., None], keep


def test_statistics_and_top_contexts_match_brute_force(tiny_model, built):
    sae, contexts, cfg, result, dash = built
    acts, keep = brute_force(tiny_model, sae, contexts)
    assert result.n_tokens == dash.n_tokens == int(keep.sum())
    fired = (acts > 0).sum((0, 1))
    torch.testing.assert_close(dash.density, (fired / keep.sum()).float())
    assert sorted(dash.dead.tolist()) == list(DEAD)
    assert result.dead_fraction == pytest.approx(len(DEAD) / sae.cfg.d_sae)
    per_context = acts.max(1)  # [N, F]
    for f in (3, 10, int(dash.order()[0])):
        lat = dash.latent(f)
        assert sum(lat.hist_counts) == lat.n_fired == int(fired[f])
        assert lat.mean_activation == pytest.approx(float(acts[..., f].sum() / fired[f]), rel=1e-5)
        expected = per_context.values[:, f].topk(min(cfg.n_top, int((per_context.values[:, f] > 0).sum())))
        got = [c.max_activation for c in lat.contexts]
        torch.testing.assert_close(torch.tensor(got), expected.values, rtol=1e-5, atol=1e-6)
        for c in lat.contexts:
            row = contexts.tokens_NL[c.context].tolist()
            lo = c.position - c.center
            assert c.token_ids == row[lo : lo + len(c.token_ids)]
            assert c.activations[c.center] == pytest.approx(c.max_activation)
            want = acts[c.context, lo : lo + len(c.token_ids), f].tolist()
            assert c.activations == pytest.approx(want, abs=1e-6)
            assert len(c.tokens) <= 2 * cfg.window + 1
            assert c.tokens == [tiny_model.tokenizer.decode([t]) for t in c.token_ids]
        assert lat.hist_edges[0] <= min(a for c in lat.contexts for a in c.activations if a > 0) * 1.0001
        assert lat.hist_edges[-1] >= lat.max_activation * 0.9999
    assert dash.latent(DEAD[0]).dead and dash.latent(DEAD[0]).contexts == []


def test_logit_effects_through_the_final_norm(tiny_model, built):
    sae, *_ = built
    effects = logit_effects(tiny_model, sae, 4, chunk=7)
    W = sae.W_dec.detach() * (1 + tiny_model.ln_final.weight.detach())
    full = W @ tiny_model.W_U.detach().T
    torch.testing.assert_close(effects.promoted_values, full.topk(4, dim=-1).values)
    torch.testing.assert_close(effects.suppressed_values, full.topk(4, dim=-1, largest=False).values)
    plain = logit_effects(tiny_model, sae, 4, through_ln_final=False)
    torch.testing.assert_close(
        plain.promoted_values, (sae.W_dec.detach() @ tiny_model.W_U.detach().T).topk(4).values
    )
    lat = built[4].latent(5)
    assert [e.token_id for e in lat.promoted] == effects.promoted_ids[5].tolist()
    assert [e.effect for e in lat.suppressed] == pytest.approx(effects.suppressed_values[5].tolist())


def test_loading_searching_and_errors(built, tmp_path):
    sae, _, _, result, dash = built
    assert dash.d_sae == sae.cfg.d_sae and dash.hook_name == RESID_HOOK
    assert dash.search("#7") == [7] and dash.search("  ") == []
    density = dash.density[dash.order()]
    assert torch.all(density[:-1] >= density[1:])
    found = dash.search("E")  # case-insensitive, over top-context centre tokens and promoted tokens
    assert found
    for i in found:
        ids = [*dash.stats["top_center_tokens"][i].tolist(), *dash.stats["promoted_ids"][i].tolist()]
        assert any("e" in dash.token_text(t).lower() for t in ids)
    with pytest.raises(IndexError, match="64 latents"):
        dash.latent(64)
    with pytest.raises(DashboardsNotFoundError, match="g2interp dashboards --sae"):
        Dashboards.load(tmp_path)
    # An SAE folder finds its dashboards/ sub-folder.
    sae_dir = tmp_path / "sae"
    sae.save(sae_dir)
    (sae_dir / DASHBOARDS_DIR).symlink_to(result.folder)
    assert Dashboards.load(sae_dir).manifest["sae_fingerprint"] == dash.manifest["sae_fingerprint"]
    # No pickles: a safetensors file and two JSON files.
    assert sorted(p.name for p in result.folder.iterdir()) == [
        "dashboards.json",
        "dashboards.safetensors",
        "tokens.json",
    ]


def test_current_builds_are_recognised(tiny_model, built):
    sae, _, cfg, result, _ = built
    assert dashboards_current(result.folder, sae, cfg)
    assert not dashboards_current(
        result.folder, sae, DashboardConfig(n_top=6, window=3, batch_contexts=5, n_logits=4)
    )
    other = JumpReLUSAE.from_tensors({k: v.clone() for k, v in sae.folded_weights().items()}, sae.cfg)
    with torch.no_grad():
        other.W_dec[0, 0] += 1
    assert not dashboards_current(result.folder, other, cfg)


def test_held_out_split_and_bad_inputs(tiny_model, tmp_path):
    sae = random_sae(tiny_model, RESID_HOOK)
    source = source_of(tiny_model, 9, 16, eval_contexts=3)
    result = build_dashboards(
        tiny_model, sae, source, tmp_path / "d", DashboardConfig(n_top=2, window=2), progress=False
    )
    manifest = Dashboards.load(tmp_path / "d").manifest
    assert result.n_contexts == 3 and result.n_tokens == source.n_rows("eval") == 3 * 15  # BOS left out
    assert manifest["split"] == "eval" and manifest["activations_fingerprint"] == source.fingerprint
    assert dashboards_current(tmp_path / "d", sae, DashboardConfig(n_top=2, window=2), source=source)
    assert not dashboards_current(
        tmp_path / "d", sae, DashboardConfig(n_top=2, window=2), source=source, split="train"
    )
    with pytest.raises(ValueError, match="holds no eval contexts"):
        build_dashboards(tiny_model, sae, source_of(tiny_model, 3, 16), tmp_path / "e", progress=False)
    narrow = JumpReLUSAE(SAEConfig(d_in=7, d_sae=4, hook_name=RESID_HOOK))
    with pytest.raises(ValueError, match="the SAE reads 7"):
        build_dashboards(tiny_model, narrow, source, tmp_path / "f", progress=False)
    with pytest.raises(ValueError, match="window"):
        DashboardConfig(window=-1)


def test_cli_builds_then_keeps_current_dashboards(world, tmp_path, capsys):
    from g2interp.dashboards.cli import main

    args = ["--sae", str(world.resid_sae), "--out", str(tmp_path / "d"), "--n-top", "3", "--window", "2"]
    args += ["--no-progress", "--log-level", "WARNING"]  # store and model come from the SAE's provenance
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["built"] and first["contexts"] == 8 and first["hook_name"] == RESID_HOOK
    assert first["split"] == "eval" and first["source"] == f"store {world.store}"
    assert (tmp_path / "d" / DASHBOARD_MANIFEST_FILE).is_file()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["built"] is False
    assert main([*args, "--force"]) == 0
    assert json.loads(capsys.readouterr().out)["built"] is True
    assert main(["--sae", str(tmp_path / "nothing")]) == 2
    assert main([*args[:2], "--store", str(tmp_path / "nothing")]) == 2


@torch.no_grad()
def test_analyze_text(tiny_model, built):
    sae = built[0]
    result = analyze_text(tiny_model, sae, "Hello there, world!", k=5)
    Q = 1 + len("Hello there, world!")
    assert len(result.tokens) == Q and result.acts.shape == (Q, sae.cfg.d_sae)
    x = tiny_model.capture(tiny_model.to_tokens("Hello there, world!"), [RESID_HOOK])[RESID_HOOK][0]
    torch.testing.assert_close(result.acts, sae.encode(x))
    torch.testing.assert_close(result.l0, (sae.encode(x) > 0).sum(-1))
    err = ((sae(x) - x) ** 2).sum(-1)[1:].sum() / (x**2).sum(-1)[1:].sum()
    assert result.total_relative_error == pytest.approx(float(err), rel=1e-4)
    assert result.ce_clean is not None and result.ce_sae is not None
    assert result.top_values[:, 0].tolist() == pytest.approx(result.acts.max(-1).values.tolist())


def test_probe_explanations_add_up_to_the_score(tiny_model, world):
    from g2interp.moderation import Moderator

    moderator = Moderator(tiny_model, heads=world.heads)
    sae = JumpReLUSAE.load(world.resid_sae)
    prompt = "How do I sharpen a knife?"
    scores = moderator.score_prompts([prompt])[0]
    for policy in ("dangerous_content", "hate_speech"):
        expl = explain_probe(moderator, sae, policy, prompt)
        assert expl.probability == pytest.approx(scores[policy], abs=1e-5)
        total = float(expl.attributions.sum()) + expl.error_term + expl.rest
        assert total == pytest.approx(expl.logit, abs=1e-5)
        assert all(a.attribution > 0 for a in expl.up) and all(a.attribution < 0 for a in expl.down)
    # Pooled head (mean over the prompt's tokens, and the last token): a latent's share is the head's
    # mean direction on its decoder direction times its mean activation, plus the same for the last token.
    head = moderator.heads.heads["dangerous_content"]
    M = tiny_model.cfg.d_model
    w = head.weight_F.detach() / head.scale_F * head.cfg.platt[0]
    enc = moderator.encoder.encode_prompt(prompt)
    run = moderator.runner.run([enc], hooks=[RESID_HOOK], stop_at_layer=2)
    span = slice(enc.pool.start - enc.n_shared, enc.pool.end - enc.n_shared)
    acts = run.acts[RESID_HOOK][0]
    mean_f = sae.encode(acts[span]).mean(0)
    last_f = sae.encode(acts[int(run.lengths_B[0]) - 1 : int(run.lengths_B[0])])[0]
    expected = mean_f * (sae.W_dec.detach() @ w[:M]) + last_f * (sae.W_dec.detach() @ w[M:])
    expl = explain_probe(moderator, sae, "dangerous_content", prompt)
    torch.testing.assert_close(expl.attributions, expected.detach(), rtol=1e-4, atol=1e-6)
    response = explain_probe(moderator, sae, "dangerous_content", prompt, "Use a whetstone.")
    assert response.probability == pytest.approx(
        moderator.score_responses([prompt], ["Use a whetstone."])[0]["dangerous_content"], abs=1e-5
    )
    with pytest.raises(ValueError, match="reads blocks.1.hook_resid_post"):
        explain_probe(moderator, JumpReLUSAE.load(world.mlp_sae), "dangerous_content", prompt)
    with pytest.raises(ValueError, match="no probe head"):
        explain_probe(moderator, sae, "harassment", prompt)


def test_runs_listing(world):
    entries = find_saes(world.runs)
    assert [(e.layer, e.site) for e in entries] == [(1, "resid_post"), (2, "mlp_out")]
    assert [e.has_dashboards for e in entries] == [True, False]
    rows = eval_rows(entries, world.runs)
    assert [r["hook"] for r in rows] == [RESID_HOOK, MLP_HOOK]
    assert all(r["L0"] > 0 and r["FVU"] is not None and 0 <= r["dead_pct"] <= 100 for r in rows)
    assert find_saes(world.empty_runs) == [] and find_saes(world.runs / "missing") == []
    assert parse_hook("blocks.12.attn.hook_z") == (12, "attn_z") and parse_hook("hook_embed") == (
        None,
        "hook_embed",
    )


@torch.no_grad()
def test_sites_off_the_residual_stream(tiny_model, tmp_path):
    """hook_z latents reach the unembedding through W_O and the post-attention norm; others get none."""
    from g2interp.dashboards.build import residual_directions

    contexts = source_of(tiny_model, 6, 16, eval_contexts=3)
    z = random_sae(tiny_model, "blocks.1.attn.hook_z", d_sae=16)
    block = tiny_model.blocks[1]
    want = (z.W_dec @ block.attn.o_proj.weight.T) * (1 + block.ln1_post.weight)
    torch.testing.assert_close(residual_directions(tiny_model, z), want)
    build_dashboards(
        tiny_model, z, contexts, tmp_path / "z", DashboardConfig(n_top=2, window=1), progress=False
    )
    assert len(Dashboards.load(tmp_path / "z").latent(4).promoted) == 10
    post = random_sae(tiny_model, "blocks.1.mlp.hook_post", d_sae=16)
    assert residual_directions(tiny_model, post) is None
    build_dashboards(
        tiny_model, post, contexts, tmp_path / "p", DashboardConfig(n_top=2, window=1), progress=False
    )
    dash = Dashboards.load(tmp_path / "p")
    assert dash.latent(4).promoted == [] and dash.latent(4).suppressed == [] and dash.top_promoted(4) == ""
