"""Why prepare has its own MinHash: time it against datasketch on the standard library.

    python bench/data_minhash_compare.py [--docs 600]

Both compute 128-permutation signatures of word 5-gram shingles over the same documents.
datasketch needs the shingles as bytes from Python (regex + join + encode) and hashes each with
SHA-1 in update_batch; frontier.data.dedup.MinHasher does shingling and hashing in numpy. Also
prints how closely the two agree on the Jaccard estimate of mutated pairs (both estimate the
same quantity). datasketch is not a dependency: install it to run this (pip install datasketch).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from data_corpus import _mutate_words, jaccard  # noqa: E402

from frontier.config.data import SourceConfig  # noqa: E402
from frontier.data.dedup import MinHasher  # noqa: E402
from frontier.data.sources import SourceReader  # noqa: E402

_WORD = re.compile(r"[A-Za-z0-9_\x80-\U0010ffff]+")


def datasketch_signature(text: str, num_perm: int, k: int):
    from datasketch import MinHash

    words = _WORD.findall(text)
    shingles = [" ".join(words[i : i + k]).encode() for i in range(max(1, len(words) - k + 1))]
    m = MinHash(num_perm=num_perm)
    m.update_batch(shingles)
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=600)
    ns = ap.parse_args()
    try:
        import datasketch
    except ImportError:
        sys.exit("datasketch is not installed: pip install datasketch")
    docs = [d.text for d in SourceReader(SourceConfig(), encoding_errors="replace", max_docs=ns.docs)]
    mb = sum(len(d.encode()) for d in docs) / 2**20
    ours = MinHasher(128, 5)
    t = time.process_time()
    for d in docs:
        ours.signature(d)
    ours_s = time.process_time() - t
    t = time.process_time()
    for d in docs:
        datasketch_signature(d, 128, 5)
    ds_s = time.process_time() - t
    rng = random.Random(0)
    err_ours, err_ds = [], []
    for d in rng.sample(docs, 100):
        m = _mutate_words(d, rng.uniform(0.005, 0.05), rng)
        true = jaccard(d, m)
        err_ours.append(float(np.mean(ours.signature(d) == ours.signature(m))) - true)
        err_ds.append(datasketch_signature(d, 128, 5).jaccard(datasketch_signature(m, 128, 5)) - true)
    print("| implementation | CPU s | MiB/s | Jaccard error mean / max abs (100 pairs) |")
    print("|---|---|---|---|")
    for name, secs, err in (
        ("frontier MinHasher (numpy)", ours_s, err_ours),
        (f"datasketch {datasketch.__version__} update_batch", ds_s, err_ds),
    ):
        e = np.array(err)
        print(f"| {name} | {secs:.2f} | {mb / secs:.1f} | {e.mean():+.4f} / {np.abs(e).max():.4f} |")
    print(f"\n{len(docs)} stdlib documents, {mb:.1f} MiB, 128 permutations, 5-word shingles")


if __name__ == "__main__":
    main()
