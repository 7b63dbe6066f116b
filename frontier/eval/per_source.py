"""Loss and bits-per-byte per data source, from the prepared val documents (val.jsonl).

Each source's documents are tokenized with the model's tokenizer, framed with BOS/EOS as the
packer frames them (tokenize.prepend_bos / append_eos), and scored like the main split. Whole
documents only, up to a token budget per source, so the byte count is exact rather than scaled.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frontier.errors import DataError
from frontier.eval.loss import bits_per_byte, perplexity, sum_nats
from frontier.utils.jsonl import iter_jsonl


def read_val_docs(prepared_dir: Path) -> dict[str, list[str]]:
    """Texts of val.jsonl grouped by their "source" field, in file order."""
    by_source: dict[str, list[str]] = defaultdict(list)
    for where, rec in iter_jsonl(Path(prepared_dir) / "val.jsonl", "the prepare stage writes val.jsonl"):
        if not isinstance(rec.get("text"), str):
            raise DataError(f'{where}: expected a JSON object with a "text" field')
        by_source[str(rec.get("source", "unknown"))].append(rec["text"])
    return dict(by_source)


def source_metrics(
    model: torch.nn.Module,
    tokenizer: Any,
    docs: list[str],
    *,
    max_tokens: int,
    append_eos: bool,
    prepend_bos: bool = False,
    seq_len: int,
    batch_size: int,
    device: torch.device,
) -> dict[str, Any]:
    """Loss, perplexity and bits-per-byte of one source's documents (whole docs up to `max_tokens`)."""
    prefix = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    suffix = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
    pieces: list[list[int]] = []
    total_tokens = 0
    num_bytes = 0
    for text in docs:
        ids = prefix + tokenizer(text, add_special_tokens=False)["input_ids"] + suffix
        if pieces and total_tokens + len(ids) > max_tokens:
            break
        pieces.append(ids)
        total_tokens += len(ids)
        num_bytes += len(text.encode("utf-8"))
    stream = np.fromiter((t for p in pieces for t in p), dtype=np.int64, count=total_tokens)
    nats, count = sum_nats(model, lambda s, n: stream[s : s + n], stream.size, seq_len, batch_size, device)
    out: dict[str, Any] = {"docs": len(pieces), "tokens_evaluated": count, "bytes": num_bytes}
    if not count or not num_bytes:  # too little text to score: say so rather than write NaN
        return {**out, "loss": None, "perplexity": None, "bits_per_byte": None}
    loss = nats / count
    return {**out, "loss": loss, "perplexity": perplexity(loss), "bits_per_byte": bits_per_byte(nats, num_bytes)}
