"""Fixtures for the eval tests (shared with tests/finetune and tests/report through tests.eval.tiny)."""

from tests.eval.tiny import single_thread  # noqa: F401  (autouse fixture)
