"""The activation pipeline with a fake tokenizer and a fake model: packing, exclusions, mixing, replay."""

from __future__ import annotations

import json

import pytest
import torch

from g2interp.sae.data import (
    CorpusError,
    ReplayBatches,
    activation_rows,
    capture_rows,
    pack_contexts,
    read_texts,
    shuffled_batches,
    split_contexts,
)
from g2interp.sae.run import contexts_for_rows

BOS, EOS, PAD = 2, 1, 0


class FakeTokenizer:
    """One token per character: id = ord(c) (>= 32, never a special id)."""

    bos_token_id, eos_token_id, pad_token_id = BOS, EOS, PAD

    def encode_batch(self, texts, prepend_bos=True):
        return [([BOS] if prepend_bos else []) + [ord(c) for c in t] for t in texts]


class FakeModel:
    """``capture`` returns the token id (and position) as activations, in a resid and a hook_z shape."""

    def capture(self, tokens, names, attention_mask=None):
        B, Q = tokens.shape
        ids = tokens.float()[..., None]
        pos = torch.arange(Q).float().expand(B, Q)[..., None]
        out = {}
        for name in names:
            if name.endswith("hook_z"):  # [B, Q, 2 heads, 2]
                out[name] = torch.cat([ids, pos, -ids, -pos], -1).reshape(B, Q, 2, 2)
            else:
                out[name] = torch.cat([ids, pos], -1)
        return out


def test_read_texts_file_and_folder(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n\n" + json.dumps({"text": ""}) + "\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(json.dumps({"text": "y", "other": 1}) + "\n")
    (tmp_path / ".hidden.jsonl").write_text(json.dumps({"text": "z"}) + "\n")
    assert read_texts(tmp_path) == ["x", "y"]  # empty texts, blank lines and hidden files skipped
    assert read_texts(tmp_path / "a.jsonl") == ["x"]
    with pytest.raises(CorpusError, match="no field 'body'"):
        read_texts(tmp_path, "body")
    with pytest.raises(CorpusError, match="does not exist"):
        read_texts(tmp_path / "missing")
    (tmp_path / "c.jsonl").write_text("{not json\n")
    with pytest.raises(CorpusError, match=r"c.jsonl:1 is not valid JSON"):
        read_texts(tmp_path)


def test_pack_contexts_joins_documents_with_eos_and_prepends_bos():
    contexts = pack_contexts(FakeTokenizer(), ["abcde", "fg", "hijklmn"], context_length=4)
    # stream: a b c d e EOS f g EOS h i j k l m n EOS (17 tokens) -> 5 pieces of 3, tail of 2 dropped
    stream = [*map(ord, "abcde"), EOS, *map(ord, "fg"), EOS, *map(ord, "hijklmn"), EOS]
    expected = torch.tensor([[BOS, *stream[i : i + 3]] for i in range(0, 15, 3)])
    assert torch.equal(contexts, expected)
    assert pack_contexts(FakeTokenizer(), ["abcde", "fg", "hijklmn"], 4, max_contexts=2).shape == (2, 4)
    with pytest.raises(CorpusError, match="shorter than one context"):
        pack_contexts(FakeTokenizer(), ["ab"], context_length=8)


def test_split_is_seeded_and_disjoint():
    contexts = torch.arange(40).reshape(10, 4)
    a, b = split_contexts(contexts, 3, seed=1), split_contexts(contexts, 3, seed=1)
    assert torch.equal(a.train, b.train) and torch.equal(a.eval, b.eval)
    assert a.eval.shape == (3, 4) and a.train.shape == (7, 4)
    assert sorted(torch.cat([a.train, a.eval])[:, 0].tolist()) == list(range(0, 40, 4))
    assert not torch.equal(split_contexts(contexts, 3, seed=2).eval, a.eval)
    # the held-out tail does not move when more contexts are held out
    assert torch.equal(split_contexts(contexts, 5, seed=1).eval[-3:], a.eval)
    assert torch.equal(split_contexts(contexts, 5, seed=1).train, a.train[:5])


def test_activation_rows_drop_bos_and_eos_and_flatten_hook_z():
    contexts = torch.tensor([[BOS, 65, EOS, 66], [BOS, 67, 68, 69], [BOS, EOS, 70, 71]])
    chunks = list(
        activation_rows(
            FakeModel(), contexts, ["resid", "attn.hook_z"], batch_contexts=2, exclude_ids=(BOS, EOS)
        )
    )
    assert len(chunks) == 2  # two forward passes
    resid = torch.cat([c["resid"] for c in chunks])
    assert resid[:, 0].tolist() == [65, 66, 67, 68, 69, 70, 71]
    assert resid[:, 1].tolist() == [1, 3, 1, 2, 3, 2, 3]  # positions of the kept tokens
    z = torch.cat([c["attn.hook_z"] for c in chunks])
    assert z.shape == (7, 4) and torch.equal(z[:, :2], resid) and torch.equal(z[:, 2:], -resid)
    rows = capture_rows(FakeModel(), contexts, ["resid"], 5, batch_contexts=1, exclude_ids=(BOS, EOS))
    assert rows["resid"][:, 0].tolist() == [65, 66, 67, 68, 69]
    with pytest.raises(CorpusError, match="give 7 rows; 8 are needed"):
        capture_rows(FakeModel(), contexts, ["resid"], 8, exclude_ids=(BOS, EOS))


def test_contexts_for_rows_takes_the_fewest():
    contexts = torch.tensor([[BOS, 65, EOS, 66], [BOS, 67, 68, 69], [BOS, EOS, 70, 71]])
    assert len(contexts_for_rows(contexts, 2, (BOS, EOS))) == 1
    assert len(contexts_for_rows(contexts, 3, (BOS, EOS))) == 2
    assert len(contexts_for_rows(contexts, 7, (BOS, EOS))) == 3
    with pytest.raises(CorpusError, match="hold 7 usable tokens; 8 are needed"):
        contexts_for_rows(contexts, 8, (BOS, EOS))


def test_shuffled_batches_mix_every_row_once_and_stay_aligned():
    n = 100
    chunks = [
        {"a": torch.arange(i, i + 10).float()[:, None], "b": -torch.arange(i, i + 10).float()[:, None]}
        for i in range(0, n, 10)
    ]
    batches = list(shuffled_batches(chunks, 8, buffer_batches=4, seed=3))
    assert len(batches) == n // 8 and all(b["a"].shape == (8, 1) for b in batches)
    seen = torch.cat([b["a"] for b in batches])[:, 0]
    assert len(set(seen.tolist())) == len(seen) == 96  # no row twice; 4 left over
    assert all(torch.equal(b["a"], -b["b"]) for b in batches)  # one permutation for every hook
    assert seen[:8].tolist() != list(range(8))  # mixed
    again = list(shuffled_batches(chunks, 8, buffer_batches=4, seed=3))
    assert all(torch.equal(x["a"], y["a"]) for x, y in zip(batches, again, strict=True))


def test_replay_batches_epochs_and_resume():
    rows = torch.arange(20.0)[:, None]
    replay = ReplayBatches(rows, 6, seed=1)  # 3 batches per epoch, 2 rows dropped each epoch
    stream = replay(0)
    first = [next(stream) for _ in range(7)]
    epoch0 = torch.cat(first[:3])[:, 0].tolist()
    assert len(set(epoch0)) == 18
    assert torch.cat(first[3:6])[:, 0].tolist() != epoch0  # a fresh order per epoch
    resumed = replay(4)  # what a run resumed at step 4 reads
    assert torch.equal(next(resumed), first[4]) and torch.equal(next(resumed), first[5])
    with pytest.raises(ValueError, match="less than one batch"):
        ReplayBatches(rows[:5], 6)
