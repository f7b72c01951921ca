"""Capture -> shards: rows equal run_with_cache, manifest and statistics, dtypes, refusals, disk faults."""

from __future__ import annotations

import copy
import errno
import math
import threading
import time

import pytest
import torch
from act_helpers import BOS, HOOKS, one_thread, store_files, tiny_model

from g2interp.activations import (
    ActivationStore,
    CaptureConfig,
    Rows,
    StoreMismatchError,
    StoreWriteError,
    capture,
)
from g2interp.activations.manifest import durable_write, sha256_bytes
from g2interp.activations.writer import PendingShard, ShardWriter


def _cfg(corpus, out, **kw) -> CaptureConfig:
    base = dict(
        data=str(corpus),
        hooks=HOOKS,
        out=str(out),
        context_length=32,
        max_contexts=20,
        eval_contexts=2,
        exclude=("bos", "pad"),
        batch_contexts=3,
        contexts_per_shard=6,
        progress=False,
    )
    base.update(kw)
    return CaptureConfig(**base)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("store") / "s"
    with one_thread():
        capture(
            tiny_model(),
            _cfg(corpus, out, max_contexts=None, context_length=48, batch_contexts=16, contexts_per_shard=64),
        )
    return out


def test_rows_equal_run_with_cache(model, store_path):
    store = ActivationStore(store_path)
    contexts = store.contexts()
    n, q = contexts.tokens_NL.shape
    assert n * q > 60_000 and int(contexts.lengths_N.min()) < q  # the whole corpus, one context padded
    _, cache = model.run_with_cache(
        contexts.tokens_NL.long(),
        list(HOOKS),
        attention_mask=contexts.attention_mask(0, n),
        stop_at_layer="auto",
    )
    keep = contexts.keep_mask(0, n, ("bos", "pad"))
    assert store.rows == int(keep.sum()) == contexts.n_tokens - n  # every real token but the BOS
    seen = torch.zeros_like(keep)
    for record in store.shards:
        rows = store.read_rows(list(HOOKS), [record.index])
        ctx, pos = rows.contexts.long(), rows.positions.long()
        assert (ctx >= record.context_start).all() and (ctx < record.context_end).all()
        assert torch.equal(rows.tokens, contexts.tokens_NL[ctx, pos])
        assert not (rows.tokens[pos == 0] == BOS).any() and (pos > 0).all()
        seen[ctx, pos] = True
        for hook in HOOKS:
            expected = cache[hook].reshape(n, q, -1)[ctx, pos]
            torch.testing.assert_close(rows.activations[hook], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(seen, keep)


def test_manifest_checksums_and_statistics(model, store_path):
    store = ActivationStore(store_path)
    m = store.manifest
    n_train = m.n_contexts - m.n_eval
    assert m.complete and m.n_shards == len(m.shards) == math.ceil(n_train / 64) + math.ceil(m.n_eval / 64)
    # the held-out contexts have shards of their own: the last one, here
    assert m.n_eval == 2 and [(s.context_start, s.context_end) for s in m.shards[-2:]] == [
        (64 * (n_train // 64), n_train),
        (n_train, m.n_contexts),
    ]
    assert set(store.unit_rows("eval")) == {m.shards[-1].index}
    assert {h: i.shape for h, i in m.hooks.items()} == {
        "blocks.0.hook_resid_post": (32,),
        "blocks.1.attn.hook_z": (2, 16),
        "blocks.2.hook_mlp_out": (32,),
    }
    assert m.dtype == "float32" and m.context_length == 48
    assert m.identity["hooks"] == sorted(HOOKS) and m.model["fingerprint"] == m.identity["model_fingerprint"]
    for record in m.shards:
        for hook, file in record.files.items():
            data = (store_path / file.path).read_bytes()
            assert file.path == f"{hook}/{record.index:06d}.safetensors"
            assert sha256_bytes(data) == file.sha256 and len(data) == file.size
    assert store.verify() == []
    for hook in HOOKS:
        acts = torch.cat([store.read_shard(hook, r.index).activations[hook] for r in m.shards]).double()
        assert acts.shape == (store.rows, store.d(hook))
        expected = acts.pow(2).sum(-1).mean().item()
        assert store.mean_squared_norm(hook) == pytest.approx(expected, rel=1e-12)
    assert not list(store_path.rglob("*.tmp")) and not list(store_path.glob("manifest.rank*"))


def test_storage_dtypes_are_casts_of_float32(model, corpus, tmp_path):
    stores = {}
    for dtype in ("float32", "bfloat16", "float16"):
        capture(model, _cfg(corpus, tmp_path / dtype, dtype=dtype, max_contexts=5, contexts_per_shard=2))
        stores[dtype] = ActivationStore(tmp_path / dtype)
    for hook in HOOKS:
        full = stores["float32"].read_shard(hook, 1).activations[hook]
        for dtype in ("bfloat16", "float16"):
            got = stores[dtype].read_shard(hook, 1).activations[hook]
            assert got.dtype == getattr(torch, dtype) and torch.equal(got, full.to(got.dtype))
            assert stores[dtype].mean_squared_norm(hook) == stores["float32"].mean_squared_norm(hook)
    f32 = sum(f.size for r in stores["float32"].shards for f in r.files.values())
    bf16 = sum(f.size for r in stores["bfloat16"].shards for f in r.files.values())
    assert bf16 < 0.6 * f32


def test_float16_overflow_is_refused(corpus, tmp_path):
    big = tiny_model()
    with torch.no_grad():
        big.embed_tokens.weight.mul_(1e6)  # residual stream far past float16's 65504
    with pytest.raises(ValueError, match="past float16's range"):
        capture(big, _cfg(corpus, tmp_path / "s", dtype="float16", hooks=("blocks.0.hook_resid_post",)))
    capture(big, _cfg(corpus, tmp_path / "b", dtype="bfloat16", hooks=("blocks.0.hook_resid_post",)))


def test_excluding_nothing_or_eos(model, corpus, tmp_path):
    keep_all = capture(
        model, _cfg(corpus, tmp_path / "all", exclude=(), max_contexts=4, contexts_per_shard=4)
    )
    assert keep_all.manifest.rows == 4 * 32
    no_eos = capture(model, _cfg(corpus, tmp_path / "eos", exclude=("bos", "eos", "pad"), max_contexts=40))
    store = ActivationStore(tmp_path / "eos")
    tokens = torch.cat([store.read_shard(HOOKS[0], r.index).tokens for r in store.shards])
    assert no_eos.manifest.rows == len(tokens) and not (tokens == 1).any() and not (tokens == BOS).any()


def test_resume_of_a_complete_store_writes_nothing(model, corpus, tmp_path):
    first = capture(model, _cfg(corpus, tmp_path / "s"))
    before = store_files(tmp_path / "s")
    again = capture(
        model, _cfg(corpus, tmp_path / "s", batch_contexts=7, queue_size=1)
    )  # not part of the identity
    assert first.shards_written == 4 and again.shards_written == 0 and again.tokens_processed == 0
    assert store_files(tmp_path / "s") == before


def test_other_settings_are_refused_with_what_differs(model, corpus, tmp_path):
    out = tmp_path / "s"
    capture(model, _cfg(corpus, out, max_contexts=4))
    before = store_files(out)
    with pytest.raises(StoreMismatchError) as info:
        capture(model, _cfg(corpus, out, max_contexts=4, context_length=16, dtype="bfloat16"))
    message = str(info.value)
    assert "context_length: store has 32, this run asks for 16" in message
    assert "dtype: store has 'float32', this run asks for 'bfloat16'" in message and "seed" not in message
    with pytest.raises(StoreMismatchError, match=r"hooks: store has \[.*\], this run asks for \['blocks.0"):
        capture(model, _cfg(corpus, out, max_contexts=4, hooks=("blocks.0.hook_resid_post",)))
    with pytest.raises(StoreMismatchError, match="model_fingerprint"):
        capture(tiny_model(seed=1), _cfg(corpus, out, max_contexts=4))
    changed = tmp_path / corpus.name
    changed.write_text(corpus.read_text().replace("citizens", "Citizens"))
    with pytest.raises(StoreMismatchError, match="corpus_fingerprint"):
        capture(model, _cfg(changed, out, max_contexts=4))
    assert store_files(out) == before  # nothing touched


def test_folders_holding_other_things(model, corpus, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(
        StoreMismatchError, match=r"not empty and holds no activation store manifest.*notes\.txt"
    ):
        capture(model, _cfg(corpus, foreign))
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    leftovers = tmp_path / "killed-before-manifest"  # what a kill during set-up leaves: resumable
    (leftovers / HOOKS[0]).mkdir(parents=True)
    (leftovers / "contexts.safetensors").write_bytes(b"partial")
    (leftovers / ".manifest.json.abc.tmp").write_bytes(b"partial")
    result = capture(model, _cfg(corpus, leftovers))
    assert result.manifest.complete and not list(leftovers.rglob("*.tmp"))


def test_bad_requests_touch_nothing(model, corpus, tmp_path):
    out = tmp_path / "s"
    with pytest.raises(KeyError, match=r"closest valid names.*blocks\.1\.hook_resid_post"):
        capture(model, _cfg(corpus, out, hooks=("blocks.1.hook_resid_pots",)))
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        capture(model, _cfg(corpus, out, context_length=257))
    with pytest.raises(ValueError, match=r"not \[batch, pos, \.\.\.\]"):
        capture(model, _cfg(corpus, out, hooks=("blocks.0.attn.hook_pattern",)))
    bare = copy.copy(model)
    bare.tokenizer = None
    with pytest.raises(ValueError, match="no tokenizer"):
        capture(bare, _cfg(corpus, out))
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n')
    with pytest.raises(ValueError, match="holds no text"):
        capture(model, _cfg(empty, tmp_path / "e"))
    assert not out.exists()
    with pytest.raises(ValueError, match="hooks lists"):
        _cfg(corpus, out, hooks=(HOOKS[0], HOOKS[0]))
    with pytest.raises(ValueError, match="exclude may hold"):
        _cfg(corpus, out, exclude=("bos", "sep"))


@pytest.mark.parametrize("fail_at", [3, 6, 10, 13])
def test_failing_writer_leaves_a_valid_resumable_store(model, corpus, tmp_path, fail_at):
    """Writes: contexts, manifest, then per shard 3 hook files and the manifest; call ``fail_at`` hits a full disk."""
    reference = tmp_path / "reference"
    capture(model, _cfg(corpus, reference))
    calls = 0

    def disk_full_after(path, data):
        nonlocal calls
        calls += 1
        if calls >= fail_at:
            raise OSError(errno.ENOSPC, "No space left on device")
        durable_write(path, data)

    out = tmp_path / "s"
    with pytest.raises(
        StoreWriteError, match=r"writing shard \d+ failed while (writing|recording).*No space left"
    ) as info:
        capture(model, _cfg(corpus, out), write_file=disk_full_after)
    assert "run the same capture again to resume" in str(info.value)
    store = ActivationStore(out)
    assert not store.manifest.complete and len(store.shards) == (fail_at - 3) // 4
    assert store.verify() == []
    resumed = capture(model, _cfg(corpus, out))
    assert resumed.shards_written == 4 - len(store.shards)
    assert store_files(out) == store_files(reference)


def test_writer_overlaps_and_bounds_its_queue(tmp_path):
    gate = threading.Event()
    written = []

    def slow_write(path, data):
        gate.wait(5)
        written.append(path.name)

    def shard(i):
        def rows():
            return torch.zeros(2, dtype=torch.int32)

        return PendingShard(i, i, i + 1, Rows({"h": torch.ones(2, 4)}, rows(), rows(), rows()), {"h": 8.0})

    writer = ShardWriter(tmp_path, {"h": "h"}, lambda record: None, queue_size=1, write_file=slow_write)
    writer.submit(shard(0))  # taken by the thread, which blocks in the write
    time.sleep(0.1)
    writer.submit(shard(1))  # waits in the queue: compute goes on
    blocked = threading.Thread(target=writer.submit, args=(shard(2),))
    blocked.start()
    time.sleep(0.2)
    assert blocked.is_alive() and written == []  # the full queue holds compute back
    gate.set()
    blocked.join(5)
    records = writer.close()
    assert [r.index for r in records] == [0, 1, 2] and written == [
        "000000.safetensors",
        "000001.safetensors",
        "000002.safetensors",
    ]
