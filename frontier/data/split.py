"""Train/val split, source weights and output order, all decided by document content hash.

Every decision reads only a document's 64-bit id key (the first 64 bits of its BLAKE2b
content hash), so the result is the same whatever the file order, worker count or machine,
and a document can never land in both splits:

- val:   key / 2^64 < val_fraction. Tiny-corpus rule: if that leaves val empty, the document
         with the smallest key moves to val; if it leaves train empty, the one with the
         largest key moves to train (so both splits are non-empty given two documents).
- copies (train only): floor(weight), plus one when splitmix64(key ^ salt) / 2^64 < frac(weight).
- order: by splitmix64(key + copy * golden ratio): a deterministic shuffle, which also spreads
         a document's upsampled copies through the file.
"""

from __future__ import annotations

import numpy as np

from frontier.data.dedup import splitmix64

_TWO64 = float(2**64)
_WEIGHT_SALT = np.uint64(0x57E1_6477_0000_0001)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def assign_val(keys: np.ndarray, val_fraction: float) -> np.ndarray:
    """(N,) bool: True for documents held out for validation."""
    is_val = keys.astype(np.float64) / _TWO64 < val_fraction
    if keys.size >= 2:
        if not is_val.any():
            is_val[np.argmin(keys)] = True
        if is_val.all():
            is_val[np.argmax(keys)] = False
    return is_val


def train_copies(keys: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N,) int64 number of times each train document is written, for per-document `weights`."""
    whole = np.floor(weights)
    u = splitmix64(keys ^ _WEIGHT_SALT).astype(np.float64) / _TWO64
    return (whole + (u < weights - whole)).astype(np.int64)


def shuffled_order(keys: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """Document indices in output order, each repeated `copies` times."""
    idx = np.repeat(np.arange(keys.size), copies)
    if idx.size == 0:
        return idx
    # copy number of each entry: position within its run of repeats
    starts = np.repeat(np.cumsum(copies) - copies, copies)
    copy_no = np.arange(idx.size) - starts
    with np.errstate(over="ignore"):
        sort_keys = splitmix64(keys[idx] + copy_no.astype(np.uint64) * _GOLDEN)
    return idx[np.argsort(sort_keys, kind="stable")]
