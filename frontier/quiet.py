"""Known, harmless third-party warnings, each filtered here and nowhere else; `install` runs once at CLI start.

A stage's log is read for what went wrong: a line that turns up in every run of every rank, about code that is
not ours and not a problem here, buries the ones that matter. Each entry of `KNOWN` names the library, what it
says (a regular expression matched at the start of its message), why it is harmless here, and whether it is
dropped everywhere or said once per run by rank 0 (a fact about the run, such as which accelerator DeepSpeed
picked, is worth one line, not one per rank). Anything not in the table passes as the library wrote it: an
unknown warning is news. Remove an entry when the library stops saying it (tests/test_logs.py checks
each one still matches the text its library writes).
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Known:
    """One known warning: a Python warning of `category` warned from module `source`, or a record of the logger
    `logger` logged from module `source`."""

    source: str  # the module that says it (its text is checked against `pattern` by the tests)
    pattern: str
    why: str
    category: type[Warning] | None = None
    logger: str | None = None
    rank0: bool = False  # said once per run by rank 0, dropped on every other rank (else dropped everywhere)


KNOWN: tuple[Known, ...] = (
    Known(
        source="deepspeed.accelerator.real_accelerator",  # logged when deepspeed is imported
        logger="DeepSpeed",
        pattern=r"Setting accelerator to CPU\. If you have GPU or other accelerator, we were unable to detect it",
        why="no CUDA device, so DeepSpeed runs on the CPU; each rank imports deepspeed and says it again. Kept "
        "on rank 0: on a machine that should have a GPU it is the line that says it was not found",
        rank0=True,
    ),
    Known(
        source="transformers.modeling_utils",
        pattern=r"`is_gradient_checkpointing` is deprecated",
        category=FutureWarning,
        why="peft (PeftModel.__init__, peft 0.21) reads transformers' deprecated alias while wrapping the model "
        "for LoRA; Frontier never calls it, and the alias works until transformers 6: peft's to update",
    ),
)


def _rank() -> int | None:
    """This process's rank as its launcher set it (0 when none did); None when the environment is
    inconsistent (the launch itself reports that): then nothing rank-dependent is dropped."""
    from frontier.train.launch.environment import read_launcher_env  # torch-free

    try:
        return read_launcher_env().rank
    except Exception:  # any refusal: the rank is unknown, keep every line
        return None


class _DropKnown(logging.Filter):
    """A logger's filter: drops its records that match a known entry."""

    def __init__(self, entries: list[Known]) -> None:
        super().__init__()
        self.patterns = [re.compile(e.pattern) for e in entries]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def dropped_here(rank: int | None) -> list[Known]:
    """The entries this process drops: all, but those said by rank 0 only where this is rank 0 (or unknown)."""
    return [e for e in KNOWN if not e.rank0 or (rank is not None and rank != 0)]


def install() -> None:
    """Filter the known warnings in this process (idempotent). Called once, at the start of `frontier.cli.main`,
    before any stage imports the libraries: a library's logger keeps the filter when the library sets it up."""
    entries = dropped_here(_rank())
    for entry in entries:
        if entry.category is not None:
            warnings.filterwarnings(
                "ignore", message=entry.pattern, category=entry.category, module=re.escape(entry.source) + "$"
            )
    loggers: dict[str, list[Known]] = {}
    for entry in entries:
        if entry.logger is not None:
            loggers.setdefault(entry.logger, []).append(entry)
    for name, known in loggers.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnown) for f in logger.filters):
            logger.addFilter(_DropKnown(known))


def table() -> str:
    """The filter table as text (docs, a test's failure message)."""
    rows = [
        f"{e.source} | {e.category.__name__ if e.category else f'log {e.logger}'} | {e.pattern} | "
        f"{'rank 0 only' if e.rank0 else 'dropped'} | {e.why}"
        for e in KNOWN
    ]
    return "\n".join(["source | kind | message | where | why harmless", *rows])
