"""The floor any language model must beat: a unigram model with add-one smoothing.

Fitted on the TRAIN split's token counts, scored on exactly the val targets the model is scored
on, so the two bits-per-byte figures share a numerator's token set and a denominator.
"""

from __future__ import annotations

import numpy as np

from frontier.eval.loss import ReadFn

_CHUNK = 1 << 24  # tokens counted per read: bounded memory whatever the split's size


def token_counts(read: ReadFn, num_tokens: int, vocab_size: int, first: int = 0) -> np.ndarray:
    """How often each id occurs in tokens [first, num_tokens) of a stream; (vocab_size,) int64."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(first, num_tokens, _CHUNK):
        chunk = read(start, min(_CHUNK, num_tokens - start))
        counts += np.bincount(chunk, minlength=vocab_size)[:vocab_size]
    return counts


def add_one_log_probs(counts: np.ndarray) -> np.ndarray:
    """log p(t) = log((count_t + 1) / (N + V)); every id in the vocabulary gets mass."""
    counts = counts.astype(np.float64)
    return np.log(counts + 1.0) - np.log(counts.sum() + counts.size)


def unigram_nats(log_probs: np.ndarray, target_counts: np.ndarray) -> float:
    """Total negative log-likelihood (nats) of targets given their counts."""
    return float(-(target_counts.astype(np.float64) @ log_probs))
