"""Fixtures shared with tests/eval (tiny models, single-threaded torch)."""

from tests.eval.tiny import single_thread  # noqa: F401  (autouse fixture)
