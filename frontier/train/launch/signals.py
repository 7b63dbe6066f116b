"""Stop requests by signal: SIGTERM (schedulers, preemption), SIGINT (Ctrl-C), SIGUSR1 (SLURM's warning),
SIGHUP (the terminal or SSH session closed: its default action would kill the run and lose every step
since the last checkpoint). A SIGHUP that is ignored when training starts (``nohup``, or a parent that
asked for it) stays ignored: that user wants the run to outlive the session.

The handler only records the signal; the loop checks the flag once per step (agreed across
ranks), saves a checkpoint and raises TrainingInterrupted, which ends the process with exit
code 3 (EXIT_INTERRUPTED) so a scheduler or wrapper can tell "stopped cleanly, resume me" from
success (0) and failure (1, 2). A second SIGINT raises KeyboardInterrupt at once, for a user who
does not want to wait for the save (the newest complete checkpoint is then the resume point).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from frontier.errors import FrontierError

EXIT_INTERRUPTED = 3
EXIT_PEER_LOST = 4  # a rank whose peer went away first (frontier.train.launch.distributed.PeerLost)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)


class TrainingInterrupted(FrontierError):
    """Training stopped by a signal after saving a checkpoint; rerun the same command to resume."""

    exit_code = EXIT_INTERRUPTED


class StopRequest:
    """Context manager that turns STOP_SIGNALS into a flag while training runs (main thread only)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.signum is not None:
            raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the save
        self.signum = signum

    signals: tuple[int, ...] = STOP_SIGNALS  # what a subclass listens to

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                    continue  # nohup: closing the session must not stop the run
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
