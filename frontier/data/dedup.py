"""Exact and near-duplicate detection.

Exact: documents are identified by a BLAKE2b-128 hash of their normalised UTF-8 text.

Near: MinHash over word n-gram shingles, bucketed by LSH bands, candidates verified by the
share of agreeing MinHash values, clusters by union-find. Everything is vectorised numpy over
uint64 with wrap-around arithmetic (no Python loop per shingle), and every constant comes from
a fixed-seed PCG64 stream, so signatures are identical on every machine:

- words are maximal runs of [A-Za-z0-9_] and non-ASCII bytes of the UTF-8 text; a word's hash is
  a polynomial rolling hash of its bytes, taken from prefix sums in O(1) per word;
- a shingle (k consecutive words) hashes to a polynomial of its word hashes, then splitmix64;
- permutation i is the multiply-add ``a_i * h + b_i (mod 2^64)``; its minimum's high 32 bits are
  signature value i (the shift commutes with the minimum, so it is done once per permutation).
"""

from __future__ import annotations

import hashlib

import numpy as np

_SEED = 0x5EED_F00D  # fixed: signatures must not depend on params.seed or the machine
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
NEIGHBOURS = 8  # bucket members compared with their next 8 (plus the bucket's first)
_CHUNK = 8192  # shingles per block: bounds the (num_perm, chunk) temporaries to a few MB

_WORD_BYTE = np.zeros(256, dtype=bool)
for _lo, _hi in ((48, 57), (65, 90), (97, 122), (95, 95), (128, 255)):
    _WORD_BYTE[_lo : _hi + 1] = True


def _utf8(text: str | bytes) -> bytes:
    return text.encode("utf-8") if isinstance(text, str) else text


def content_id(text: str | bytes) -> str:
    """Hex BLAKE2b-128 of the UTF-8 text: the document id and the exact-dedup key."""
    return hashlib.blake2b(_utf8(text), digest_size=16).hexdigest()


def id_key(doc_id: str) -> int:
    """The first 64 bits of an id as an integer (uniform; used for split, weights and order)."""
    return int(doc_id[:16], 16)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise over uint64 (a bijection that mixes every bit)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def _odd_u64(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 2**64, size=n, dtype=np.uint64, endpoint=False) | np.uint64(1)


class MinHasher:
    """MinHash signatures (uint32, `num_perm` values) of word `shingle_size`-gram sets."""

    def __init__(self, num_perm: int = 128, shingle_size: int = 5) -> None:
        rng = np.random.default_rng(_SEED)
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.a = _odd_u64(rng, num_perm)[:, None]  # (P, 1)
        self.b = rng.integers(0, 2**64, size=num_perm, dtype=np.uint64)[:, None]  # (P, 1)
        self.p_byte, self.p_word = (int(v) for v in _odd_u64(rng, 2))
        self.p_byte_inv = pow(self.p_byte, -1, 2**64)  # odd => invertible mod 2^64
        self._powers = np.ones(1, dtype=np.uint64)
        self._inv_powers = np.ones(1, dtype=np.uint64)

    def _pow_tables(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """p_byte^j and p_byte^-j (mod 2^64) for j < n, grown geometrically and cached."""
        if self._powers.size < n:
            size = max(n, 2 * self._powers.size)
            with np.errstate(over="ignore"):
                self._powers = np.cumprod(np.full(size, self.p_byte, dtype=np.uint64), dtype=np.uint64)
                self._inv_powers = np.cumprod(np.full(size, self.p_byte_inv, dtype=np.uint64), dtype=np.uint64)
            # cumprod starts at p^1; shift so index j holds p^j
            self._powers = np.concatenate(([np.uint64(1)], self._powers[:-1]))
            self._inv_powers = np.concatenate(([np.uint64(1)], self._inv_powers[:-1]))
        return self._powers[:n], self._inv_powers[:n]

    def shingles(self, text: str | bytes) -> np.ndarray:
        """uint64 hashes of the document's word shingles (one per position; may repeat)."""
        data = np.frombuffer(_utf8(text), dtype=np.uint8)
        is_word = _WORD_BYTE[data]
        edges = np.diff(is_word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edges == 1)
        ends = np.flatnonzero(edges == -1)
        if starts.size == 0:  # no words at all: the whole text is the one shingle
            digest = hashlib.blake2b(data.tobytes(), digest_size=8).digest()
            return np.frombuffer(digest, dtype=np.uint64).copy()
        powers, inv_powers = self._pow_tables(data.size + 1)
        with np.errstate(over="ignore"):
            # prefix[i] = sum_{j<i} (byte_j + 1) * p^j  (mod 2^64)
            prefix = np.zeros(data.size + 1, dtype=np.uint64)
            np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[: data.size], out=prefix[1:])
            words = (prefix[ends] - prefix[starts]) * inv_powers[starts]  # (W,) position-free word hashes
            k = min(self.shingle_size, words.size)
            n = words.size - k + 1
            acc = words[:n].copy()
            pw = np.uint64(self.p_word)
            for t in range(1, k):  # acc = sum_t words[i + t] * p_word^t
                acc += words[t : t + n] * pw
                pw *= np.uint64(self.p_word)
        return splitmix64(acc)

    def signature(self, text: str | bytes) -> np.ndarray:
        """(num_perm,) uint32 MinHash signature."""
        sh = self.shingles(text)
        best = np.full((self.num_perm,), np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for lo in range(0, sh.size, _CHUNK):
                block = self.a * sh[None, lo : lo + _CHUNK]  # (P, C)
                block += self.b
                np.minimum(best, block.min(axis=1), out=best)
        return (best >> np.uint64(32)).astype(np.uint32)


def lsh_params(threshold: float, num_perm: int, fn_weight: float = 0.95) -> tuple[int, int]:
    """(bands, rows) with bands * rows <= num_perm minimising weighted false positives + negatives.

    P(candidate | Jaccard s) = 1 - (1 - s^rows)^bands; the errors are that curve's area below
    the threshold (false positives) and its complement's area above it (false negatives), as in
    datasketch. Candidates are verified against their signatures afterwards, so a false positive
    here costs only a comparison: the weight favours recall (at 0.8 / 128: 16 bands of 8 rows,
    P(candidate) = 0.95 at s = 0.8 and 0.06 at s = 0.5).
    """
    grid_lo = np.linspace(0.0, threshold, 201)
    grid_hi = np.linspace(threshold, 1.0, 201)
    best, best_err = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            fp = np.trapezoid(1 - (1 - grid_lo**rows) ** bands, grid_lo)
            fn = np.trapezoid((1 - grid_hi**rows) ** bands, grid_hi)
            err = (1 - fn_weight) * fp + fn_weight * fn
            if err < best_err:
                best, best_err = (bands, rows), err
    return best


def _band_keys(sig: np.ndarray, band: int, rows: int) -> np.ndarray:
    """(N,) uint64 hash of each signature's `band`-th slice of `rows` values."""
    part = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
    acc = np.zeros(sig.shape[0], dtype=np.uint64)
    for j in range(rows):
        salt = np.uint64((band << 32) | j)  # distinct per position, so bands never share buckets
        acc = splitmix64(acc ^ (part[:, j] + salt))
    return acc


def _find(parent: np.ndarray, i: int) -> int:
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        parent[i], i = root, parent[i]
    return root


def near_duplicate_clusters(
    sig: np.ndarray, order: np.ndarray, threshold: float, *, bands: int, rows: int
) -> np.ndarray:
    """Cluster representative of every document: (N,) int64 index, itself when it is kept.

    sig: (N, P) uint32 signatures. order: (N,) uint64 tie-break keys (distinct); within a
    cluster the document with the smallest key is the representative, so the result does not
    depend on the documents' input order. In each band, members of a bucket (sorted by key) are
    paired with the bucket's first member and with their next NEIGHBOURS members, so small
    buckets are compared all-pairs and a huge bucket costs O(size), not O(size^2). A candidate
    pair is kept when its signatures agree on at least `threshold` of their values.
    """
    n = sig.shape[0]
    parent = np.arange(n, dtype=np.int64)
    if n < 2:
        return parent
    by_key = np.argsort(order, kind="stable")
    pairs: list[np.ndarray] = []
    for band in range(bands):
        keys = _band_keys(sig, band, rows)[by_key]
        perm = np.argsort(keys, kind="stable")
        idx = by_key[perm]  # grouped by bucket, smallest order key first within a bucket
        sorted_keys = keys[perm]
        new_group = np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1]))
        if new_group.all():
            continue
        head = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
        member = ~new_group
        pairs.append(np.stack([idx[head[member]], idx[member]], axis=1))
        for d in range(1, NEIGHBOURS + 1):
            same = sorted_keys[d:] == sorted_keys[:-d]
            if not same.any():
                break
            pairs.append(np.stack([idx[:-d][same], idx[d:][same]], axis=1))
    if not pairs:
        return parent
    cand = np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0)  # (M, 2) distinct unordered pairs
    agree = np.empty(cand.shape[0], dtype=np.float64)
    for lo in range(0, cand.shape[0], 65536):
        c = cand[lo : lo + 65536]
        agree[lo : lo + 65536] = (sig[c[:, 0]] == sig[c[:, 1]]).mean(axis=1)
    for i, j in cand[agree >= threshold]:
        ri, rj = _find(parent, int(i)), _find(parent, int(j))
        if ri != rj:
            # the root with the smaller order key represents the merged cluster
            if order[rj] < order[ri]:
                ri, rj = rj, ri
            parent[rj] = ri
    return np.array([_find(parent, i) for i in range(n)], dtype=np.int64)
