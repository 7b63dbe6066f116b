"""Held-out loss of a causal LM over a token stream, and the conversions to perplexity and bits-per-byte.

The stream is cut into windows of ``seq_len + 1`` tokens that overlap by one token, so every token
but the first is predicted exactly once, with up to ``seq_len`` tokens of context (documents are
separated by EOS in the stream, as in training, so EOS predictions count too).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

ReadFn = Callable[[int, int], np.ndarray]  # (start, length) -> int64 tokens


def windows(num_tokens: int, seq_len: int) -> Iterator[tuple[int, int]]:
    """(start, length) of windows of up to seq_len + 1 tokens covering [0, num_tokens), overlap 1."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    start = 0
    while start + 1 < num_tokens:
        length = min(seq_len + 1, num_tokens - start)
        yield start, length
        start += length - 1


@torch.inference_mode()
def sum_nats(
    model: torch.nn.Module, read: ReadFn, num_tokens: int, seq_len: int, batch_size: int, device: torch.device
) -> tuple[float, int]:
    """(total negative log-likelihood in nats, tokens predicted) over the first `num_tokens` tokens."""
    total = 0.0
    count = 0
    pending: list[np.ndarray] = []

    def flush() -> None:
        nonlocal total, count
        batch = torch.from_numpy(np.stack(pending)).to(device)  # (B, L + 1), all rows one length
        pending.clear()
        logits = model(input_ids=batch[:, :-1]).logits  # (B, L, V)
        targets = batch[:, 1:]  # (B, L)
        nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum")
        total += float(nll)
        count += targets.numel()

    for start, length in windows(num_tokens, seq_len):
        window = read(start, length)
        if pending and (len(pending) == batch_size or window.size != pending[0].size):
            flush()
        pending.append(window)
    if pending:
        flush()
    return total, count


def perplexity(mean_nats: float) -> float:
    """exp(loss), inf where it would overflow."""
    return math.exp(mean_nats) if mean_nats < 700 else float("inf")


def bits_per_byte(total_nats: float, num_bytes: float) -> float:
    """Total nats / ln 2 / UTF-8 bytes: a tokenizer-independent measure of compression."""
    if num_bytes <= 0:
        return float("nan")
    return total_nats / math.log(2) / num_bytes
