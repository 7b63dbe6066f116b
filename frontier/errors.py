"""Errors that end a stage with one clear line instead of a traceback.

Every error a user can cause (a bad config, bad data, a bad checkpoint, a bad command line)
is raised as a subclass of FrontierError; `frontier.cli` prints its message on one line and
exits with `exit_code`.
"""

from __future__ import annotations


class FrontierError(Exception):
    """Base of all user-facing errors: the message must name the file/key/value and what was expected."""

    exit_code = 2


class ConfigError(FrontierError):
    """A parameter file, override or DeepSpeed JSON is invalid."""


class DataError(FrontierError):
    """Input data is missing, unreadable or empty after filtering."""


class CheckpointError(FrontierError):
    """A checkpoint is missing, corrupt or incompatible."""


class TrainingError(FrontierError):
    """Training cannot continue (for example, repeated non-finite losses)."""


class ResourceError(FrontierError):
    """The machine cannot give a stage what it needs (an address-space limit too low to start torch)."""


# What allocation failures say once a library has turned them into its own exception (torch's
# CPU allocator, a C++ std::bad_alloc, CUDA, a shared library that cannot be mapped, a thread
# whose stack cannot be mapped): the cause is the machine or its limits, not the user's files.
OUT_OF_MEMORY_TEXTS = (
    "can't allocate memory",
    "cannot allocate memory",
    "std::bad_alloc",
    "out of memory",
    "failed to map segment",
    "can't start new thread",
)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """`exc` and what it was raised from or during, as its traceback shows them: ``__cause__``, else
    ``__context__`` unless suppressed (``raise ... from None``, or ``from`` another exception)."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and all(cur is not e for e in out):
        out.append(cur)
        cur = cur.__cause__ if cur.__cause__ is not None else None if cur.__suppress_context__ else cur.__context__
    return out


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is an allocation failure."""
    return any(
        isinstance(e, MemoryError) or any(t in str(e).lower() for t in OUT_OF_MEMORY_TEXTS)
        for e in exception_chain(exc)
    )


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first non-blank line of `exc`'s message (its class name when it has none), cut to `limit` characters."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else exc.__class__.__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
