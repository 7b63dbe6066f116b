"""The prepare stage: sources -> clean, deduplicated train.jsonl / val.jsonl + stats.json.

Two passes keep memory flat in the corpus size. Pass 1 streams every source through
normalisation, filters and exact dedup, appends each surviving document as its final JSONL line
to a spool file and keeps only a small index row (id key, spool offset, source, MinHash
signature). Then near-duplicate clustering, the split and the weights run on the index (see
frontier.data.split), and pass 2 copies the chosen lines from the spool into train.jsonl and
val.jsonl in a content-hash order. Output bytes therefore depend only on the document contents,
never on file order or machine.
"""

from __future__ import annotations

import json
import logging
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from frontier.config import Params
from frontier.data.clean import Cleaner, normalize
from frontier.data.dedup import MinHasher, content_id, id_key, lsh_params, near_duplicate_clusters
from frontier.data.progress import Progress
from frontier.data.sources import SourceReader
from frontier.data.split import assign_val, shuffled_order, train_copies
from frontier.errors import DataError
from frontier.provenance import record_stage
from frontier.utils.atomic import atomic_dir, write_json

log = logging.getLogger("frontier.data.prepare")

SPOOL = ".spool.jsonl"


@dataclass
class SourceStats:
    """Everything reported per source in stats.json."""

    weight: float
    files: int = 0
    docs_read: int = 0
    bytes_read: int = 0
    binary_files: int = 0
    non_regular_files: int = 0
    truncated_files: int = 0
    oversized_docs: int = 0
    unreadable_files: int = 0
    oversized_files: int = 0
    malformed_records: int = 0
    invalid_utf8_docs: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    exact_duplicates: int = 0
    near_duplicates: int = 0
    near_clusters: int = 0
    docs: int = 0  # unique documents kept (train + val, before weights)
    bytes: int = 0
    train_docs: int = 0  # lines written to train.jsonl (after weights)
    train_bytes: int = 0
    val_docs: int = 0
    val_bytes: int = 0
    problems: list[str] = field(default_factory=list)


class _Index:
    """Columns of the surviving documents: 8 bytes per value, grown in place, numpy at the end."""

    def __init__(self) -> None:
        self.keys = array("Q")
        self.offsets = array("q")
        self.lengths = array("q")
        self.sources = array("q")
        self.nbytes = array("q")
        self.sigs = bytearray()  # uint32 signatures, back to back

    def arrays(self, num_perm: int) -> dict[str, np.ndarray]:
        n = len(self.keys)
        sigs = np.frombuffer(bytes(self.sigs), dtype=np.uint32) if self.sigs else np.zeros(n * num_perm, np.uint32)
        return {
            "keys": np.frombuffer(self.keys, dtype=np.uint64).copy(),
            "offsets": np.frombuffer(self.offsets, dtype=np.int64).copy(),
            "lengths": np.frombuffer(self.lengths, dtype=np.int64).copy(),
            "sources": np.frombuffer(self.sources, dtype=np.int64).copy(),
            "nbytes": np.frombuffer(self.nbytes, dtype=np.int64).copy(),
            "sigs": sigs.reshape(n, num_perm),  # (N, P); zeros when near dedup is off
        }


def _ingest(readers: list[SourceReader], params: Params, stats: list[SourceStats], spool_path: Path) -> _Index:
    """Pass 1: read, normalise, filter, exact-dedup, MinHash; spool the surviving lines."""
    cfg = params.prepare
    cleaner = Cleaner(cfg.clean)
    hasher = MinHasher(cfg.dedup.num_perm, cfg.dedup.shingle_size) if cfg.dedup.near else None
    seen: set[int] = set()
    index = _Index()
    offset = 0
    with open(spool_path, "wb") as spool:
        for si, (src, reader) in enumerate(zip(cfg.sources, readers)):
            st = stats[si]
            st.drops = dict.fromkeys(cleaner.filter_names, 0)
            if cfg.encoding_errors == "skip":
                st.drops["invalid_utf8"] = 0
            with Progress(f"prepare {src.name}", reader.total_bytes()) as bar:
                for raw in reader:
                    bar.update(position=reader.counter.value, ndocs=1)
                    text = normalize(raw.text, cfg.clean)
                    why = cleaner.reject(text)
                    if why is not None:
                        st.drops[why] += 1
                        continue
                    data = text.encode("utf-8")
                    doc_id = content_id(data)
                    full = int(doc_id, 16)
                    if cfg.dedup.exact:
                        if full in seen:
                            st.exact_duplicates += 1
                            continue
                        seen.add(full)
                    line = json.dumps({"text": text, "source": src.name, "id": doc_id}, ensure_ascii=False)
                    encoded = (line + "\n").encode("utf-8")
                    spool.write(encoded)
                    index.keys.append(id_key(doc_id))
                    index.offsets.append(offset)
                    index.lengths.append(len(encoded))
                    index.sources.append(si)
                    index.nbytes.append(len(data))
                    if hasher is not None:
                        index.sigs += hasher.signature(data).tobytes()
                    offset += len(encoded)
                bar.update(position=reader.counter.value)
            _absorb_read_stats(st, reader, cfg.encoding_errors)
    return index


def _absorb_read_stats(st: SourceStats, reader: SourceReader, encoding_errors: str) -> None:
    rs = reader.stats
    counts = ("files", "docs_read", "bytes_read", "binary_files", "non_regular_files", "truncated_files",
              "oversized_docs", "unreadable_files", "oversized_files", "malformed_records")  # fmt: skip
    for name in counts:
        setattr(st, name, getattr(rs, name))
    st.invalid_utf8_docs = rs.invalid_utf8_docs
    if encoding_errors == "skip":
        st.drops["invalid_utf8"] = rs.invalid_utf8_docs
    st.problems = list(rs.problems)


def _empty_error(stats: list[SourceStats], names: list[str]) -> DataError:
    """The message for a corpus that nothing survived: what was read and which filters took it."""
    read = sum(s.docs_read for s in stats)
    if read == 0:
        skipped = {
            "binary files": sum(s.binary_files for s in stats),
            "unreadable files": sum(s.unreadable_files for s in stats),
            "oversized compressed files": sum(s.oversized_files for s in stats),
            "malformed records": sum(s.malformed_records for s in stats),
            "invalid UTF-8 documents": sum(s.invalid_utf8_docs for s in stats),
        }
        detail = ", ".join(f"{v} {k}" for k, v in skipped.items() if v) or "the sources hold no documents"
        return DataError(f"no documents read from sources {', '.join(names)} ({detail})")
    drops: dict[str, int] = {}
    for s in stats:
        for k, v in s.drops.items():
            key = "prepare.encoding_errors=skip" if k == "invalid_utf8" else f"prepare.clean.{k}"
            drops[key] = drops.get(key, 0) + v
    drops["prepare.dedup.exact"] = sum(s.exact_duplicates for s in stats)
    culprits = ", ".join(f"{k} dropped {v}" for k, v in sorted(drops.items(), key=lambda kv: -kv[1]) if v)
    return DataError(f"all {read} documents read were dropped: {culprits}; relax those parameters")


def _write_split(spool_path: Path, out: Path, order: np.ndarray, idx: dict[str, np.ndarray], desc: str) -> None:
    """Pass 2: copy the spooled lines `order` (document indices) into `out`, in that order."""
    total = int(idx["lengths"][order].sum())
    with open(spool_path, "rb") as spool, open(out, "wb") as f, Progress(desc, total) as bar:
        for i in order:
            spool.seek(int(idx["offsets"][i]))
            line = spool.read(int(idx["lengths"][i]))
            f.write(line)
            bar.update(nbytes=len(line), ndocs=1)


def _totals(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for st in stats.values():
        for k, v in st.items():
            if isinstance(v, bool) or k == "weight":
                continue
            if isinstance(v, int):
                totals[k] = totals.get(k, 0) + v
            elif isinstance(v, dict):
                sub = totals.setdefault(k, {})
                for kk, vv in v.items():
                    sub[kk] = sub.get(kk, 0) + vv
    return totals


def prepare(params: Params, out_dir: Path) -> dict[str, Any]:
    """Run the prepare stage into `out_dir` (atomically); returns the stats written to stats.json."""
    cfg = params.prepare
    out_dir = Path(out_dir)
    readers = [
        SourceReader(
            s,
            encoding_errors=cfg.encoding_errors,
            max_docs=cfg.max_docs,
            max_doc_bytes=4 * cfg.clean.max_chars,  # UTF-8: at most 4 bytes a character
            corrupt_files=cfg.corrupt_files,
            strict=cfg.strict,
        )
        for s in cfg.sources
    ]
    stats = [SourceStats(weight=s.weight) for s in cfg.sources]
    names = [s.name for s in cfg.sources]
    with atomic_dir(out_dir) as tmp:
        spool_path = tmp / SPOOL
        idx = _ingest(readers, params, stats, spool_path).arrays(cfg.dedup.num_perm)
        n = idx["keys"].size
        if n == 0:
            raise _empty_error(stats, names)
        keep = np.ones(n, dtype=bool)
        lsh: dict[str, Any] = {}
        if cfg.dedup.near:
            bands, rows = lsh_params(cfg.dedup.threshold, cfg.dedup.num_perm)
            rep = near_duplicate_clusters(idx["sigs"], idx["keys"], cfg.dedup.threshold, bands=bands, rows=rows)
            keep = rep == np.arange(n)
            for si, st in enumerate(stats):
                st.near_duplicates = int(np.sum(~keep & (idx["sources"] == si)))
                st.near_clusters = int(np.unique(rep[~keep][idx["sources"][rep[~keep]] == si]).size)
            lsh = {"bands": bands, "rows": rows}
        kept = np.flatnonzero(keep)
        if kept.size < 2:
            raise DataError(
                f"{kept.size} unique document(s) survived cleaning and dedup; at least 2 are needed "
                "for non-empty train and val splits (add data or relax prepare.clean / prepare.dedup)"
            )
        keys = idx["keys"][kept]
        is_val = assign_val(keys, cfg.val_fraction)
        weights = np.array([s.weight for s in cfg.sources])[idx["sources"][kept]]
        copies = np.where(is_val, 0, train_copies(keys, weights))
        if copies.sum() == 0:
            raise DataError("source weights below 1 sampled no train documents; raise prepare.sources[].weight")
        train_order = kept[shuffled_order(keys, copies)]
        val_docs = kept[is_val]
        val_order = val_docs[np.argsort(idx["keys"][val_docs], kind="stable")]
        _write_split(spool_path, tmp / "train.jsonl", train_order, idx, "prepare write train")
        _write_split(spool_path, tmp / "val.jsonl", val_order, idx, "prepare write val")
        spool_path.unlink()
        for si, st in enumerate(stats):
            mine = idx["sources"] == si
            st.docs = int(np.sum(keep & mine))
            st.bytes = int(idx["nbytes"][keep & mine].sum())
            tr, va = train_order[mine[train_order]], val_order[mine[val_order]]
            st.train_docs, st.train_bytes = int(tr.size), int(idx["nbytes"][tr].sum())
            st.val_docs, st.val_bytes = int(va.size), int(idx["nbytes"][va].sum())
        per_source = {name: asdict(st) for name, st in zip(names, stats)}
        result = {
            "sources": per_source,
            "totals": _totals(per_source),
            "dedup": {"threshold": cfg.dedup.threshold, "num_perm": cfg.dedup.num_perm, **lsh},
            "val_fraction": cfg.val_fraction,
        }
        write_json(tmp / "stats.json", result)
        record_stage(params, tmp, "prepare")
    t = result["totals"]
    log.info(
        "prepare: %d docs read, %d kept (%d train lines, %d val), %d exact + %d near duplicates dropped",
        t["docs_read"], t["docs"], t["train_docs"], t["val_docs"], t["exact_duplicates"], t["near_duplicates"],
    )  # fmt: skip
    return result
