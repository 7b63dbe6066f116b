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
