"""The embedded Gemma 3 270M: a short capture equals run_with_cache and the reader reads it back."""

from __future__ import annotations

import pytest
import torch
from act_helpers import CORPUS

from g2interp.activations import ActivationStore, CaptureConfig, capture

pytestmark = pytest.mark.slow


def test_embedded_capture_equals_run_with_cache(embedded_model, tmp_path):
    hooks = ("blocks.3.hook_resid_post", "blocks.5.attn.hook_z")
    cfg = CaptureConfig(
        data=str(CORPUS),
        hooks=hooks,
        out=str(tmp_path / "s"),
        context_length=64,
        max_contexts=3,
        eval_contexts=1,
        exclude=("bos", "pad"),
        batch_contexts=2,
        contexts_per_shard=2,
        progress=False,
    )
    result = capture(embedded_model, cfg)
    store = ActivationStore(tmp_path / "s")
    assert result.manifest.complete and store.rows == 3 * 63
    assert store.d(hooks[0]) == 640 and store.d(hooks[1]) == 4 * 256
    contexts = store.contexts()
    _, cache = embedded_model.run_with_cache(contexts.tokens_NL.long(), list(hooks), stop_at_layer="auto")
    for hook in hooks:
        rows = store.read_rows([hook], [s.index for s in store.shards])
        expected = cache[hook].reshape(3, 64, -1)[rows.contexts.long(), rows.positions.long()]
        scale = expected.abs().max()
        assert (
            rows.activations[hook] - expected
        ).abs().max() <= 1e-5 * scale  # relative to the stream's scale
        msn = expected.double().pow(2).sum(-1).mean().item()
        assert store.mean_squared_norm(hook) == pytest.approx(msn, rel=1e-9)
    batch = next(store.batches(hooks[0], batch_size=64, seed=0))
    assert batch.shape == (64, 640) and torch.isfinite(batch).all()
