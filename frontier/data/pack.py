"""The tokenize stage: encode train.jsonl / val.jsonl in parallel and pack them into token shards.

The parent process only slices the JSONL into batches of raw lines and writes shards; worker
processes parse, encode (HF tokenizers, one thread each) and return compact id arrays. At most
2 x workers batches are in flight and results are consumed in submission order, so memory stays
flat in the corpus size and the shards are byte-identical for any worker count. Workers are
spawned, not forked: a fork after the tokenizers thread pool has started can deadlock.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import multiprocessing as mp
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from frontier.config import Params
from frontier.data.progress import Progress
from frontier.data.tokens import ShardWriter, token_dtype
from frontier.errors import DataError
from frontier.provenance import record_stage
from frontier.utils.atomic import atomic_dir, write_json
from frontier.utils.procs import die_with_parent

log = logging.getLogger("frontier.data.pack")

SPLITS = ("train", "val")
_BATCH_BYTES = 4 << 20  # a batch also ends at this many bytes of JSONL, to balance the workers

# Worker state, set once per process by _init_worker.
_TOK: Any = None
_PREFIX: list[int] = []
_SUFFIX: list[int] = []
_DTYPE: np.dtype = np.dtype("<u4")


def _init_worker(tokenizer_json: str, prefix: list[int], suffix: list[int], dtype: str) -> None:
    # One thread per worker: parallelism comes from the processes, not from tokenizers' own pool.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    from tokenizers import Tokenizer

    global _TOK, _PREFIX, _SUFFIX, _DTYPE
    _TOK = Tokenizer.from_str(tokenizer_json)
    _PREFIX, _SUFFIX, _DTYPE = prefix, suffix, np.dtype(dtype)


def _init_pool_worker(parent_pid: int, *initargs: Any) -> None:
    die_with_parent(parent_pid)  # a killed tokenize stage takes its workers with it
    _init_worker(*initargs)


def _encode_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray, dict[str, list[int]]]:
    """Encode the JSONL lines in `blob`: (concatenated ids, per-document lengths, per-source counts).

    Per-source counts are [docs, utf8 bytes, tokens]; `where` is "file:first line" for errors.
    """
    texts: list[str] = []
    sources: list[str] = []
    for i, line in enumerate(blob.splitlines()):
        try:
            record = json.loads(line)
            texts.append(record["text"])
            sources.append(record.get("source", "unknown"))
        except (ValueError, KeyError, TypeError):
            path, _, first = where.rpartition(":")
            raise DataError(
                f"{path}:{int(first) + i}: not a prepared document line (JSON with a 'text' string)"
            ) from None
    encodings = _TOK.encode_batch_fast(texts, add_special_tokens=False)
    ids = [_PREFIX + e.ids + _SUFFIX for e in encodings]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=_DTYPE, count=int(lengths.sum()))
    counts: dict[str, list[int]] = {}
    for text, source, n in zip(texts, sources, lengths.tolist()):
        c = counts.setdefault(source, [0, 0, 0])
        c[0] += 1
        c[1] += len(text.encode("utf-8"))
        c[2] += n
    return flat, lengths, counts


def _batches(path: Path, batch_docs: int) -> Iterator[tuple[bytes, str, int]]:
    """(raw JSONL lines, "file:first line", file bytes) batches of at most batch_docs lines."""
    with open(path, "rb") as f:
        lines: list[bytes] = []
        size = 0
        first = 1
        for lineno, line in enumerate(f, start=1):
            if not lines:
                first = lineno
            lines.append(line)
            size += len(line)
            if len(lines) >= batch_docs or size >= _BATCH_BYTES:
                yield b"".join(lines), f"{path}:{first}", size
                lines, size = [], 0
        if lines:
            yield b"".join(lines), f"{path}:{first}", size


@contextlib.contextmanager
def _single_thread_tokenizers() -> Iterator[None]:
    """Keep tokenizers on one thread in this process for the block (workers=1 runs in-process)."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _encoded(
    path: Path, batch_docs: int, workers: int, initargs: tuple[Any, ...]
) -> Iterator[tuple[tuple[np.ndarray, np.ndarray, dict[str, list[int]]], int]]:
    """Encoded batches of `path` in file order, with the JSONL bytes each covered."""
    if workers <= 1:
        with _single_thread_tokenizers():
            _init_worker(*initargs)
            for blob, where, size in _batches(path, batch_docs):
                yield _encode_batch(blob, where), size
        return
    # ProcessPoolExecutor, not Pool: a worker that dies (or whose initializer fails) raises
    # BrokenProcessPool here, where Pool would silently respawn it forever.
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_pool_worker, initargs=(os.getpid(), *initargs)
    ) as pool:
        pending: deque[tuple[Future, int]] = deque()
        try:
            for blob, where, size in _batches(path, batch_docs):
                pending.append((pool.submit(_encode_batch, blob, where), size))
                if len(pending) >= 2 * workers:
                    future, n = pending.popleft()
                    yield future.result(), n
            while pending:
                future, n = pending.popleft()
                yield future.result(), n
        except BrokenProcessPool as exc:
            raise DataError(f"{path}: a tokenize worker died ({exc}); see the messages above") from None
        finally:
            for future, _ in pending:
                future.cancel()


def tokenizer_info(tokenizer_dir: Path) -> dict[str, Any]:
    """vocab size, special ids and identity of a tokenizer directory, without importing transformers
    when it was written by our tokenizer stage."""
    from frontier.data.tokenizer import INFO_FILE, load_tokenizer

    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise DataError(f"{tokenizer_dir}: no tokenizer.json (run the tokenizer stage)")
    info_path = tokenizer_dir / INFO_FILE
    if info_path.is_file():
        return json.loads(info_path.read_text(encoding="utf-8"))
    tok = load_tokenizer(tokenizer_dir)
    return {
        "kind": "external",
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id,
        "eos_id": tok.eos_token_id,
        "pad_id": tok.pad_token_id,
    }


def encoder(tokenizer_dir: Path, info: dict[str, Any]) -> tuple[str, list[int], list[int]]:
    """What encodes a document: the tokenizers pipeline (JSON) and the ids around every document's own.

    Our kinds: tokenizer.json, nothing around. A pretrained tokenizer: the pipeline transformers builds
    from its files (transformers 5 rebuilds some families' normalizer and pre-tokenizer) and its template's
    ids (Llama's BOS), so a document packs as ``tokenizer(text)["input_ids"]`` of the model's own tokenizer.
    """
    from frontier.data.tokenizer import OWN_KINDS, framing, load_tokenizer

    if info.get("kind") in OWN_KINDS:
        return (tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"), [], []
    fast = load_tokenizer(tokenizer_dir)
    before, after = framing(fast)
    return fast.backend_tokenizer.to_str(), before, after


def document_frame(
    before: list[int], after: list[int], bos: int | None, eos: int | None, *, prepend_bos: bool, append_eos: bool
) -> tuple[list[int], list[int]]:
    """The ids before and after every document: the tokenizer's template's, then a BOS / EOS where asked and
    the template has none there (documents are separated by EOS; a Llama tokenizer's BOS is not doubled)."""
    prefix = ([bos] if prepend_bos and before[:1] != [bos] else []) + before
    suffix = after + ([eos] if append_eos and after[-1:] != [eos] else [])
    return prefix, suffix


def _merge_counts(into: dict[str, list[int]], counts: dict[str, list[int]]) -> None:
    for source, c in counts.items():
        acc = into.setdefault(source, [0, 0, 0])
        for i, v in enumerate(c):
            acc[i] += v


def _source_stats(counts: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
    out = {}
    for source, (docs, nbytes, tokens) in sorted(counts.items()):
        out[source] = {
            "docs": docs,
            "bytes": nbytes,
            "tokens": tokens,
            "bytes_per_token": nbytes / tokens if tokens else 0.0,
        }
    return out


def tokenize(
    params: Params, prepared_dir: Path, tokenizer_dir: Path, out_dir: Path, workers: int = 0
) -> dict[str, Any]:
    """Run the tokenize stage: <out>/train and <out>/val token shards + stats.json (atomically)."""
    cfg = params.tokenize
    prepared_dir, tokenizer_dir, out_dir = Path(prepared_dir), Path(tokenizer_dir), Path(out_dir)
    workers = workers or cfg.workers or _cores()
    info = tokenizer_info(tokenizer_dir)
    eos, bos = info.get("eos_id"), info.get("bos_id")
    if cfg.append_eos and eos is None:
        raise DataError(f"{tokenizer_dir}: tokenizer has no eos token but tokenize.append_eos is true")
    if cfg.prepend_bos and bos is None:
        raise DataError(f"{tokenizer_dir}: tokenizer has no bos token but tokenize.prepend_bos is true")
    pipeline, before, after = encoder(tokenizer_dir, info)
    prefix, suffix = document_frame(before, after, bos, eos, prepend_bos=cfg.prepend_bos, append_eos=cfg.append_eos)
    vocab = int(info["vocab_size"])
    initargs = (pipeline, prefix, suffix, token_dtype(vocab).str)
    inputs = {split: prepared_dir / f"{split}.jsonl" for split in SPLITS}
    for path in inputs.values():
        if not path.is_file():
            raise DataError(f"{path}: not found (run the prepare stage first)")
    stats: dict[str, Any] = {"tokenizer": info, "splits": {}}  # no worker count: output is independent of it
    with atomic_dir(out_dir) as tmp:
        for split, path in inputs.items():
            counts: dict[str, list[int]] = {}
            writer = ShardWriter(
                tmp / split,
                vocab_size=vocab,
                eos_id=eos,
                bos_id=bos,
                pad_id=info.get("pad_id"),
                shard_tokens=cfg.shard_tokens,
                extra_meta={
                    "tokenizer": {
                        k: info.get(k) for k in ("kind", "vocab_size", "sha256", "bos_id", "eos_id", "pad_id")
                    },
                    "append_eos": cfg.append_eos,
                    "prepend_bos": cfg.prepend_bos,
                },
            )
            with Progress(f"tokenize {split}", path.stat().st_size) as bar:
                for (flat, lengths, batch_counts), size in _encoded(path, cfg.batch_docs, workers, initargs):
                    writer.add_batch(flat, lengths)
                    _merge_counts(counts, batch_counts)
                    bar.update(nbytes=size, ndocs=lengths.size)
            writer.num_bytes = sum(c[1] for c in counts.values())
            meta = writer.close()
            stats["splits"][split] = {
                "num_tokens": meta["num_tokens"],
                "num_docs": meta["num_docs"],
                "num_bytes": meta["num_bytes"],
                "bytes_per_token": meta["num_bytes"] / meta["num_tokens"] if meta["num_tokens"] else 0.0,
                "shards": len(meta["shards"]),
                "sources": _source_stats(counts),
            }
        write_json(tmp / "stats.json", stats)
        record_stage(params, tmp, "tokenize")
    s = stats["splits"]
    log.info(
        "tokenize: train %d tokens, val %d tokens (%d workers)",
        s["train"]["num_tokens"],
        s["val"]["num_tokens"],
        workers,
    )
    return stats


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
