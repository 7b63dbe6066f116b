"""Synthetic benchmark corpus: real standard-library code, spliced and mutated, with planted pairs.

Every base document splices 3-8 random runs of 10-60 lines from random stdlib files, so two
base documents share almost no 5-word shingles. Some bases get a planted partner, written to a
separate file (a partner never sits next to its base):

- exact: the same text (exact dedup must drop one);
- near:  0.5-1.5% of the words replaced by fresh identifiers (true Jaccard about 0.85-0.95;
         near dedup must drop one);
- far:   a hard negative sharing 40-70% of its line runs (true Jaccard mostly 0.2-0.7; both
         must survive).

The true Jaccard of every planted pair is recorded, so scores can condition on it.

The generator streams to JSONL shards and keeps only ids, so memory is flat in the size.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from frontier.config.data import CleanConfig
from frontier.data.clean import normalize
from frontier.data.dedup import MinHasher, content_id
from frontier.data.sources import stdlib_root

_SPLIT = re.compile(r"([A-Za-z0-9_]+)")


@dataclass
class Planted:
    exact: list[tuple[str, str]] = field(default_factory=list)  # (base id, copy id)
    near: list[tuple[str, str, float]] = field(default_factory=list)  # (base id, copy id, true Jaccard)
    far: list[tuple[str, str, float]] = field(default_factory=list)
    unique: list[str] = field(default_factory=list)  # base ids without a near/exact partner
    docs: int = 0
    bytes: int = 0


def load_pool(min_lines: int = 20) -> list[list[str]]:
    pool = []
    for path in sorted(stdlib_root().rglob("*.py")):
        if "site-packages" in path.parts or "dist-packages" in path.parts:
            continue
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError):
            continue
        if len(lines) >= min_lines:
            pool.append(lines)
    return pool


def _runs(rng: random.Random, pool: list[list[str]], n: int) -> list[str]:
    out = []
    for _ in range(n):
        lines = rng.choice(pool)
        length = rng.randint(10, 60)
        start = rng.randrange(max(1, len(lines) - length))
        out.append("\n".join(lines[start : start + length]))
    return out


def _mutate_words(text: str, rate: float, rng: random.Random) -> str:
    parts = _SPLIT.split(text)  # odd indices are words
    words = range(1, len(parts), 2)
    for i in rng.sample(words, max(1, int(len(words) * rate))):
        parts[i] = f"mut_{rng.getrandbits(40):010x}"
    return "".join(parts)


_HASHER = MinHasher()


def jaccard(a: str, b: str) -> float:
    """True Jaccard of the word-shingle sets prepare's MinHash estimates (64-bit shingle hashes)."""
    sa, sb = np.unique(_HASHER.shingles(a)), np.unique(_HASHER.shingles(b))
    inter = np.intersect1d(sa, sb, assume_unique=True).size
    return inter / (sa.size + sb.size - inter)


class _ShardedWriter:
    def __init__(self, root: Path, prefix: str, shard_bytes: int) -> None:
        self.root, self.prefix, self.shard_bytes = root, prefix, shard_bytes
        self.index, self.size, self.f = 0, 0, None

    def write(self, text: str) -> int:
        if self.f is None or self.size >= self.shard_bytes:
            if self.f is not None:
                self.f.close()
            self.f = open(self.root / f"{self.prefix}_{self.index:04d}.jsonl", "w", encoding="utf-8")
            self.index, self.size = self.index + 1, 0
        line = json.dumps({"text": text}, ensure_ascii=False) + "\n"
        self.f.write(line)
        self.size += len(line)
        return len(text.encode("utf-8"))

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def generate(
    root: Path,
    size_bytes: int,
    *,
    seed: int = 0,
    p_exact: float = 0.03,
    p_near: float = 0.05,
    p_far: float = 0.03,
) -> Planted:
    """Write about `size_bytes` of document text as JSONL shards under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pool = load_pool()
    cfg = CleanConfig()
    doc_id = lambda t: content_id(normalize(t, cfg))  # noqa: E731 - the id prepare will compute
    base_out = _ShardedWriter(root, "base", 64 << 20)
    pair_out = _ShardedWriter(root, "planted", 64 << 20)
    planted = Planted()
    try:
        while planted.bytes < size_bytes:
            runs = _runs(rng, pool, rng.randint(3, 8))
            text = "\n".join(runs) + "\n"
            planted.bytes += base_out.write(text)
            planted.docs += 1
            base = doc_id(text)
            r = rng.random()
            if r < p_exact:
                planted.bytes += pair_out.write(text)
                planted.exact.append((base, base))
            elif r < p_exact + p_near:
                copy = _mutate_words(text, rng.uniform(0.005, 0.015), rng)
                planted.bytes += pair_out.write(copy)
                planted.near.append((base, doc_id(copy), jaccard(text, copy)))
            else:
                planted.unique.append(base)
                if r < p_exact + p_near + p_far:
                    keep = max(1, round(len(runs) * rng.uniform(0.4, 0.7)))
                    mixed = runs[:keep] + _runs(rng, pool, len(runs) - keep)
                    copy = "\n".join(mixed) + "\n"
                    planted.bytes += pair_out.write(copy)
                    planted.far.append((base, doc_id(copy), jaccard(text, copy)))
            planted.docs += r < p_exact + p_near + p_far
    finally:
        base_out.close()
        pair_out.close()
    return planted
