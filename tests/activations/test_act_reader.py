"""Reading: seeded shuffles that visit every row once per epoch, resuming, checksums, on-the-fly sources."""

from __future__ import annotations

import pytest
import torch
from act_helpers import HOOKS, one_thread, tiny_model

from g2interp.activations import (
    ActivationStore,
    CaptureConfig,
    IndexedBatch,
    OnTheFlySource,
    ShardCorruptError,
    ShardMissingError,
    StoreError,
    capture,
    plan_epoch,
)

HOOK = HOOKS[0]


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("reader") / "s"
    cfg = CaptureConfig(
        data=str(corpus),
        hooks=HOOKS,
        out=str(out),
        context_length=32,
        max_contexts=60,
        eval_contexts=0,
        exclude=("bos", "pad"),
        batch_contexts=10,
        contexts_per_shard=7,
        progress=False,
    )
    with one_thread():
        capture(tiny_model(), cfg)
    return out


def _keys(batch: IndexedBatch) -> list[tuple[int, int]]:
    return list(zip(batch.contexts.tolist(), batch.positions.tolist(), strict=True))


def _all_rows(store: ActivationStore, hook: str) -> dict[tuple[int, int], torch.Tensor]:
    out = {}
    for record in store.shards:
        rows = store.read_shard(hook, record.index)
        for key, act in zip(
            zip(rows.contexts.tolist(), rows.positions.tolist(), strict=True),
            rows.activations[hook],
            strict=True,
        ):
            out[key] = act
    return out


def test_every_row_once_per_epoch_with_its_values(store_path):
    store = ActivationStore(store_path)
    truth = _all_rows(store, HOOK)
    assert len(truth) == store.rows == 60 * 31
    batches = store.batches(HOOK, batch_size=128, seed=0, buffer_rows=500, epochs=2, with_index=True)
    assert (
        batches.batches_per_epoch == -(-store.rows // 128) and len(batches) == 2 * batches.batches_per_epoch
    )
    epochs: list[list[tuple[int, int]]] = [[], []]
    for i, batch in enumerate(batches):
        assert batch.activations.shape[1] == 32 and batch.activations.dtype == torch.float32
        epoch = i // batches.batches_per_epoch
        keys = _keys(batch)
        epochs[epoch].extend(keys)
        expected = torch.stack([truth[k] for k in keys])
        assert torch.equal(batch.activations, expected)
    for keys in epochs:
        assert len(keys) == len(set(keys)) == store.rows and set(keys) == set(truth)
    assert epochs[0] != epochs[1]  # a new order each epoch
    # shuffled across shards: a 500-row buffer holds two 217-row shards, and the first batch mixes both
    first = epochs[0][:128]
    assert len({c // 7 for c, _ in first}) == 2


def test_shuffle_is_deterministic_for_a_seed(store_path):
    store = ActivationStore(store_path)

    def run(seed):
        return [b for b in store.batches(HOOK, batch_size=100, seed=seed, buffer_rows=700)]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), torch.cat(c))
    assert sorted(torch.cat(a)[:, 0].tolist()) == sorted(torch.cat(c)[:, 0].tolist())


@pytest.mark.parametrize("stop", [0, 1, 7, 18, 19, 25])
def test_resume_from_a_position(store_path, stop):
    store = ActivationStore(store_path)
    kwargs = dict(batch_size=100, seed=3, buffer_rows=450, epochs=2, with_index=True)
    full = list(store.batches(HOOK, **kwargs))
    head = store.batches(HOOK, **kwargs)
    for _ in range(stop):
        next(head)
    assert head.position == stop
    tail = list(store.batches(HOOK, start=head.position, **kwargs))
    assert len(tail) == len(full) - stop
    for x, y in zip(tail, full[stop:], strict=True):
        assert _keys(x) == _keys(y) and torch.equal(x.activations, y.activations)


def test_several_hooks_stay_aligned(store_path):
    store = ActivationStore(store_path)
    truths = {h: _all_rows(store, h) for h in HOOKS}
    for batch in store.batches(list(HOOKS), batch_size=256, seed=0, buffer_rows=300, with_index=True):
        assert set(batch.activations) == set(HOOKS)
        assert batch.activations["blocks.1.attn.hook_z"].shape == (len(batch.tokens), 32)
        for hook in HOOKS:
            expected = torch.stack([truths[hook][k] for k in _keys(batch)])
            assert torch.equal(batch.activations[hook], expected)


def test_drop_last_buffers_and_dtype(store_path):
    store = ActivationStore(store_path)
    dropped = list(store.batches(HOOK, batch_size=1000, drop_last=True, dtype=torch.bfloat16))
    assert len(dropped) == store.rows // 1000 and all(b.shape == (1000, 32) for b in dropped)
    assert dropped[0].dtype == torch.bfloat16
    tiny_buffer = list(
        store.batches(HOOK, batch_size=64, buffer_rows=1, prefetch=False)
    )  # one shard per window
    assert sum(len(b) for b in tiny_buffer) == store.rows
    windows = plan_epoch([5, 5, 5, 20, 1], 10, seed=0, epoch=0)
    assert sorted(u for w in windows for u in w) == [0, 1, 2, 3, 4]
    assert all(sum([5, 5, 5, 20, 1][u] for u in w) <= 10 or len(w) == 1 for w in windows)
    endless = store.batches(HOOK, batch_size=500, epochs=None)
    assert sum(1 for _, _ in zip(range(20), endless, strict=False)) == 20  # past several epochs
    with pytest.raises(KeyError, match="has no hook"):
        store.batches("blocks.2.hook_resid_post", batch_size=4)


def test_corrupted_and_missing_shards_are_named(store_path, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(store_path, copy)
    store = ActivationStore(copy)
    victim = store.shards[3].files[HOOK]
    data = bytearray((copy / victim.path).read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the activations
    (copy / victim.path).write_bytes(bytes(data))
    with pytest.raises(ShardCorruptError, match=f"shard 3 of {HOOK}: .*{victim.path} is corrupted"):
        list(store.batches(HOOK, batch_size=100))
    assert store.verify() == [f"shard 3 of {HOOK}: {copy / victim.path} is corrupted"]
    list(ActivationStore(copy).batches(HOOKS[1], batch_size=100))  # the other hooks' files still read
    gone = store.shards[5].files[HOOKS[2]]
    (copy / gone.path).unlink()
    with pytest.raises(ShardMissingError, match=f"{gone.path} is missing"):
        list(ActivationStore(copy).batches(HOOKS[2], batch_size=100))
    with pytest.raises(StoreError, match="holds no activation store"):
        ActivationStore(tmp_path)


def test_on_the_fly_source_gives_the_stores_batches_bit_for_bit(store_path):
    store = ActivationStore(store_path)
    model = tiny_model()
    live = OnTheFlySource(model, store.contexts_config, batch_contexts=10)
    assert live.fingerprint == store.fingerprint and torch.equal(
        live.contexts().tokens_NL, store.contexts().tokens_NL
    )
    kwargs = dict(batch_size=128, seed=0, buffer_rows=400)
    stored = list(store.batches(HOOK, with_index=True, epochs=1, **kwargs))
    got = list(live.batches(HOOK, with_index=True, epochs=1, **kwargs))
    assert len(got) == len(stored)
    for a, b in zip(got, stored, strict=True):
        assert _keys(a) == _keys(b) and torch.equal(a.activations, b.activations)
    # the plain interface: Tensor[batch, d], deterministic, resumable
    plain = live.batches(HOOK, **kwargs)
    first = [next(plain) for _ in range(3)]
    assert isinstance(first[0], torch.Tensor) and first[0].shape == (128, 32)
    assert all(torch.equal(a, b.activations) for a, b in zip(first, got, strict=False))
    resumed = live.batches(HOOK, start=plain.position, **kwargs)
    assert torch.equal(next(resumed), got[3].activations)
