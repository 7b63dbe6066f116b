"""Exact ids, MinHash estimates against true Jaccard, LSH parameters and order-free clustering."""

from __future__ import annotations

import random
import re

import numpy as np
import pytest

from frontier.data.dedup import MinHasher, content_id, lsh_params, near_duplicate_clusters

from .helpers import doc_text


def _shingle_set(text: str, k: int) -> set[tuple[str, ...]]:
    words = re.findall(r"[A-Za-z0-9_\x80-\U0010ffff]+", text)
    return {tuple(words[i : i + k]) for i in range(max(1, len(words) - k + 1))}


def _jaccard(a: str, b: str, k: int = 5) -> float:
    sa, sb = _shingle_set(a, k), _shingle_set(b, k)
    return len(sa & sb) / len(sa | sb)


def _mutate(text: str, rate: float, rng: random.Random) -> str:
    words = text.split(" ")
    for _ in range(int(len(words) * rate)):
        words[rng.randrange(len(words))] = f"zz{rng.randrange(10**9)}"
    return " ".join(words)


def test_content_id_is_blake2b_128_of_utf8():
    assert content_id("é") == content_id("é".encode()) and len(content_id("x")) == 32
    assert content_id("a") != content_id("a ")


def test_minhash_estimates_true_jaccard():
    rng = random.Random(0)
    hasher = MinHasher(num_perm=256, shingle_size=5)
    errors = []
    for i in range(40):
        base = doc_text(i, words=150)
        other = _mutate(base, rng.choice([0.0, 0.01, 0.03, 0.1, 0.3]), rng)
        est = float(np.mean(hasher.signature(base) == hasher.signature(other)))
        errors.append(est - _jaccard(base, other))
    errors = np.array(errors)
    # 256 permutations: standard error <= 1/32 per pair; the mean error must be near zero (no bias)
    assert np.abs(errors).max() < 0.15 and abs(errors.mean()) < 0.03


def test_signature_properties():
    hasher = MinHasher(num_perm=64, shingle_size=3)
    a = doc_text(1)
    assert hasher.signature(a).dtype == np.uint32 and hasher.signature(a).shape == (64,)
    np.testing.assert_array_equal(hasher.signature(a), MinHasher(64, 3).signature(a.encode()))
    # word hashing ignores the separators between words, not the words themselves
    assert np.array_equal(hasher.signature("alpha beta gamma"), hasher.signature("alpha, beta;\n gamma"))
    assert not np.array_equal(hasher.signature("alpha beta gamma"), hasher.signature("alpha beta delta"))
    assert hasher.signature("+-*/").shape == (64,)  # no words at all still gets a signature


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.5, 64), (0.8, 128), (0.9, 256)])
def test_lsh_params_favour_recall_at_the_threshold(threshold, num_perm):
    bands, rows = lsh_params(threshold, num_perm)
    assert bands * rows <= num_perm
    p = lambda s: 1 - (1 - s**rows) ** bands  # noqa: E731
    assert p(threshold) > 0.9  # pairs at the threshold almost always become candidates
    assert p(threshold - 0.3) < 0.2  # clearly dissimilar pairs rarely do (and are verified anyway)
    assert lsh_params(threshold, num_perm, fn_weight=0.5)[1] > rows  # balanced weights: a steeper, later curve


def test_clusters_find_near_duplicates_and_ignore_order():
    rng = random.Random(1)
    hasher = MinHasher()
    bases = [doc_text(i, words=200) for i in range(30)]
    docs = bases + [_mutate(bases[i], 0.01, rng) for i in range(10)] + [_mutate(bases[0], 0.02, rng)]
    sigs = np.stack([hasher.signature(d) for d in docs])
    keys = np.array([int(content_id(d)[:16], 16) for d in docs], dtype=np.uint64)
    bands, rows = lsh_params(0.8, hasher.num_perm)
    rep = near_duplicate_clusters(sigs, keys, 0.8, bands=bands, rows=rows)
    clusters = {}
    for i, r in enumerate(rep):
        clusters.setdefault(int(r), set()).add(i)
    multi = sorted(sorted(c) for c in clusters.values() if len(c) > 1)
    expected = sorted([[i, 30 + i] for i in range(1, 10)] + [[0, 30, 40]])
    assert multi == expected
    for members in clusters.values():  # the representative is the smallest key of its cluster
        assert min(members, key=lambda i: keys[i]) in {int(rep[i]) for i in members}
    perm = np.random.default_rng(0).permutation(len(docs))
    rep2 = near_duplicate_clusters(sigs[perm], keys[perm], 0.8, bands=bands, rows=rows)
    np.testing.assert_array_equal(keys[perm][rep2], keys[rep][perm])
