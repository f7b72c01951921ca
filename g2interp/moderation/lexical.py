"""Hashed TF-IDF of words and word pairs: the lexical member of a blended head.

Words are lower-cased runs of letters, digits and apostrophes; features are words and adjacent word pairs,
hashed with CRC-32 into ``n_buckets`` (stable across machines and Python versions, so a saved head reads the
same features everywhere). Term frequency is sublinear (1 + log tf), idf is fitted on training texts (0
for buckets seen in fewer than two texts, so one-off strings cannot carry weight), rows are L2-normalised.
"""

from __future__ import annotations

import itertools
import re
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import sparse

WORD = re.compile(r"[a-z0-9']+")


def grams(text: str) -> list[str]:
    words = WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def counts(texts: Sequence[str], n_buckets: int) -> sparse.csr_matrix:
    """[N, n_buckets] raw counts of hashed grams."""
    indptr, indices, data = [0], [], []
    for text in texts:
        c = Counter(zlib.crc32(g.encode()) % n_buckets for g in grams(text))
        indices.extend(c.keys())
        data.extend(c.values())
        indptr.append(len(indices))
    return sparse.csr_matrix(
        (np.asarray(data, np.float32), np.asarray(indices, np.int64), np.asarray(indptr, np.int64)),
        shape=(len(texts), n_buckets),
    )


def fit_idf(texts: Sequence[str], n_buckets: int) -> np.ndarray:
    """Smoothed idf per bucket, 0 where fewer than two texts have it."""
    df = np.bincount(counts(texts, n_buckets).indices, minlength=n_buckets).astype(np.float64)
    n = len(texts)
    idf = np.log((1 + n) / (1 + df)) + 1.0
    idf[df < 2] = 0.0
    return idf.astype(np.float32)


def tfidf(texts: Sequence[str], idf: np.ndarray) -> sparse.csr_matrix:
    """[N, n_buckets] L2-normalised sublinear TF-IDF."""
    x = counts(texts, idf.shape[0])
    x.data = (1.0 + np.log(x.data)) * idf[x.indices]
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    norms[norms == 0] = 1.0
    return sparse.diags((1.0 / norms).astype(np.float32)) @ x
