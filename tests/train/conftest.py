from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.train.helpers import BASE, Corpus, make_corpus, params


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Tokenizer + train/val token splits shared by the training tests (read-only)."""
    return make_corpus(Path(tmp_path_factory.mktemp("corpus")))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and the ranks launched as processes use one too, so
    in-process and subprocess runs compute bit-identically); restored for the rest of the suite.
    Module scope: autouse fixtures of a scope run before the other fixtures of that scope."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory, corpus: Corpus) -> Path:
    """The reference for multi-rank layouts: BASE on one rank, in-process, micro-batch 4 (its output dir)."""
    from frontier.train.run import train

    root = tmp_path_factory.mktemp("one_rank")
    train(params(*BASE, "train.micro_batch_size=4"), corpus.tokens, corpus.tokenizer, root / "out", root / "ckpt")
    return root / "out"
