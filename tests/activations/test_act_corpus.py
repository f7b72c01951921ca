"""Corpus -> contexts: packing round trip, determinism, limits, file kinds, bad corpora."""

from __future__ import annotations

import json

import pytest
import torch
from act_helpers import BOS, EOS, PAD, tiny_tokenizer

from g2interp.activations import CorpusError, PackedContexts, corpus_fingerprint, pack_corpus
from g2interp.activations.corpus import document_order, load_documents


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


def _texts(corpus) -> list[str]:
    return [json.loads(line)["text"] for line in corpus.read_text().splitlines()]


def _stream(packed: PackedContexts) -> list[int]:
    """The token stream the contexts hold: every context without its BOS and padding, in order."""
    return [
        t
        for ctx, n in zip(packed.tokens_NL.tolist(), packed.lengths_N.tolist(), strict=True)
        for t in ctx[1:n]
    ]


@pytest.mark.parametrize("context_length", [2, 17, 64])
def test_packing_round_trip(tokenizer, corpus, context_length):
    packed = pack_corpus(tokenizer, corpus, context_length, seed=3)
    texts = _texts(corpus)
    order = document_order(len(texts), seed=3, shuffle=True)
    assert sorted(order.tolist()) == list(range(len(texts))) and order.tolist() != list(range(len(texts)))
    expected = [t for i in order for t in (*tokenizer.encode(texts[i], prepend_bos=False), EOS)]
    stream = _stream(packed)
    assert stream == expected  # no token lost or duplicated, at document borders either
    # split the stream at the separators: each piece decodes back to its document's exact text
    pieces, current = [], []
    for t in stream:
        if t == EOS:
            pieces.append(tokenizer.decode(current))
            current = []
        else:
            current.append(t)
    assert current == [] and pieces == [texts[i] for i in order]
    assert packed.n_documents == len(texts)
    assert (packed.tokens_NL[:, 0] == BOS).all()
    assert (packed.lengths_N[:-1] == context_length).all()
    last = int(packed.lengths_N[-1])
    assert 2 <= last <= context_length and (packed.tokens_NL[-1, last:] == PAD).all()
    assert packed.n_tokens == len(expected) + len(packed)


def test_packing_is_deterministic_for_a_seed(tokenizer, corpus):
    a = pack_corpus(tokenizer, corpus, 32, seed=5)
    b = pack_corpus(tokenizer, corpus, 32, seed=5)
    c = pack_corpus(tokenizer, corpus, 32, seed=6)
    assert torch.equal(a.tokens_NL, b.tokens_NL) and a.to_bytes() == b.to_bytes()
    assert not torch.equal(a.tokens_NL, c.tokens_NL)
    ordered = pack_corpus(tokenizer, corpus, 32, shuffle=False)
    texts = _texts(corpus)
    assert _stream(ordered)[:50] == tokenizer.encode(texts[0], prepend_bos=False)[:50]


def test_max_contexts_and_bytes_round_trip(tokenizer, corpus):
    packed = pack_corpus(tokenizer, corpus, 32, max_contexts=7)
    full = pack_corpus(tokenizer, corpus, 32)
    assert len(packed) == 7 and (packed.lengths_N == 32).all()
    assert torch.equal(packed.tokens_NL, full.tokens_NL[:7])
    again = PackedContexts.from_bytes(packed.to_bytes())
    assert torch.equal(again.tokens_NL, packed.tokens_NL) and torch.equal(again.lengths_N, packed.lengths_N)
    assert (again.bos_token_id, again.eos_token_id, again.pad_token_id) == (BOS, EOS, PAD)


def test_keep_mask(tokenizer):
    packed = pack_corpus_from(tokenizer, ["ab", "c"], 4)  # stream a b <eos> c <eos> -> [B a b E] [B c E P]
    assert packed.tokens_NL.tolist() == [
        [BOS, *tokenizer.encode("ab", prepend_bos=False), EOS],
        [BOS, *tokenizer.encode("c", prepend_bos=False), EOS, PAD],
    ]
    assert packed.keep_mask(0, 2, ("bos", "pad")).tolist() == [
        [False, True, True, True],
        [False, True, True, False],
    ]
    assert packed.keep_mask(0, 2, ("bos", "eos", "pad")).tolist() == [
        [False, True, True, False],
        [False, True, False, False],
    ]
    assert packed.keep_mask(0, 2, ()).all()
    assert packed.attention_mask(0, 1) is None
    assert packed.attention_mask(0, 2).tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def pack_corpus_from(tokenizer, texts, context_length):
    from g2interp.activations import pack_texts

    return pack_texts(tokenizer, iter([texts]), context_length)


def test_folders_and_file_kinds(tokenizer, tmp_path):
    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "b.txt").write_text("second document\nwith two lines\n")
    (folder / "a.txt").write_text("first document")
    (folder / ".hidden.txt").write_text("ignored")
    dataset, field = load_documents(folder)
    assert sorted(dataset[field]) == ["first document", "second document\nwith two lines\n"]
    packed = pack_corpus(tokenizer, folder, 8, shuffle=False)
    assert (
        tokenizer.decode([t for t in _stream(packed) if t != EOS])
        == "first documentsecond document\nwith two lines\n"
    )

    jsonl = tmp_path / "j"
    jsonl.mkdir()
    (jsonl / "x.jsonl").write_text(json.dumps({"body": "hello"}) + "\n" + json.dumps({"body": None}) + "\n")
    assert len(pack_corpus(tokenizer, jsonl, 4, text_field="body")) == 2
    with pytest.raises(CorpusError, match=r"no field 'text'.*\['body'\]"):
        pack_corpus(tokenizer, jsonl, 4)

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["from parquet"]}), tmp_path / "p.parquet")
    assert tokenizer.decode(_stream(pack_corpus(tokenizer, tmp_path / "p.parquet", 4))[:-1]) == "from parquet"

    (folder / "c.jsonl").write_text("{}\n")
    with pytest.raises(CorpusError, match="mixes file kinds"):
        pack_corpus(tokenizer, folder, 8)


def test_bad_corpora(tokenizer, tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        pack_corpus(tokenizer, tmp_path / "nope.jsonl", 8)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(CorpusError, match="holds no"):
        pack_corpus(tokenizer, empty_dir, 8)
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": ""}) + "\n")
    with pytest.raises(CorpusError, match="holds no text"):
        pack_corpus(tokenizer, blank, 8)
    nothing = tmp_path / "nothing.jsonl"
    nothing.write_text("")
    with pytest.raises(CorpusError):
        pack_corpus(tokenizer, nothing, 8)
    (tmp_path / "doc.csv").write_text("a,b\n")
    with pytest.raises(CorpusError, match="not one of"):
        pack_corpus(tokenizer, tmp_path / "doc.csv", 8)


def test_fingerprint_follows_content_not_location(tmp_path, corpus):
    copy = tmp_path / corpus.name
    copy.write_bytes(corpus.read_bytes())
    before = corpus_fingerprint(copy, "text")
    assert before == corpus_fingerprint(corpus, "text")  # same name and bytes elsewhere: same corpus
    assert before != corpus_fingerprint(copy, "body")
    data = bytearray(copy.read_bytes())
    data[100] ^= 1
    copy.write_bytes(bytes(data))
    assert corpus_fingerprint(copy, "text") != before
