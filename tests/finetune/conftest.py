"""Fixtures shared with tests/eval (tiny models, single-threaded torch), and the pairs and base every fine-tune
test trains on."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.eval.tiny import single_thread  # noqa: F401  (autouse fixture)
from tests.finetune.helpers import sft_pairs, tiny_base


@pytest.fixture(scope="session")
def ft_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ft_shared")


@pytest.fixture(scope="session")
def sft(ft_root: Path) -> Path:
    """Docstring -> body pairs (train.jsonl, heldout.jsonl) from real stdlib code; read-only."""
    return sft_pairs(ft_root)


@pytest.fixture(scope="session")
def base(ft_root: Path) -> Path:
    """The tiny pre-trained Llama (HF directory); read-only."""
    return tiny_base(ft_root)
