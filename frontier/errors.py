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


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is an allocation failure."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, MemoryError) or any(t in str(cur).lower() for t in OUT_OF_MEMORY_TEXTS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False
