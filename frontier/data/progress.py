"""Progress of a data stage: a tqdm bar on a terminal, plain log lines anywhere else.

On a terminal, tqdm shows bytes/s with documents and docs/s in the postfix (refreshed at most twice a
second, so updating per document stays cheap). When stderr is a file or a pipe (Snakemake's and DVC's
logs), no bar is drawn (its carriage-return frames would fill the log): one line every
``LOG_EVERY_S`` seconds says how far, how fast and how long is left. TQDM_DISABLE=1 silences both.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import time
from typing import Any

from tqdm import tqdm

log = logging.getLogger("frontier.progress")
LOG_EVERY_S = 15.0


def progress_enabled() -> bool:
    """False when TQDM_DISABLE is set. tqdm itself reads it once, at import; reading it per bar
    lets a caller (or a test) change it later."""
    return os.environ.get("TQDM_DISABLE", "") in ("", "0")


def bars_enabled() -> bool:
    """Progress bars (ours and libraries') only on a terminal: in a log file they are noise."""
    return progress_enabled() and sys.stderr.isatty()


def eta(done: float, total: float | None, seconds: float) -> str:
    """Time left at the rate so far, as H:MM:SS ("?" before there is a rate or a total)."""
    if not total or done <= 0 or seconds <= 0 or done >= total:
        return "0:00:00" if total and done >= total else "?"
    return str(datetime.timedelta(seconds=round((total - done) * seconds / done)))


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


class Progress:
    def __init__(self, desc: str, total_bytes: int | None = None) -> None:
        enabled = progress_enabled()
        self.desc = desc
        self.total = total_bytes or None
        self.lines = enabled and not bars_enabled()  # log lines instead of a bar
        self.bar = tqdm(
            total=self.total,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            mininterval=0.5,
            dynamic_ncols=True,
            disable=not enabled or self.lines,
        )
        self.done = 0
        self.docs = 0
        self.start = time.perf_counter()
        self._last = 0.0
        self._last_line = self.start

    def update(self, *, nbytes: int = 0, ndocs: int = 0, position: int | None = None) -> None:
        """Advance by `nbytes` (or to absolute byte `position`) and `ndocs` documents."""
        if position is not None:
            nbytes = position - self.done
        if nbytes:
            self.done += nbytes
            self.bar.update(nbytes)
        self.docs += ndocs
        now = time.perf_counter()
        if now - self._last > 0.5:
            self._last = now
            rate = self.docs / max(now - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.docs} docs, {rate:,.0f} docs/s", refresh=False)
        if self.lines and now - self._last_line >= LOG_EVERY_S:
            self._last_line = now
            log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        """One plain progress line: done / total (percent), byte and document rates, ETA."""
        seconds = max((now or time.perf_counter()) - self.start, 1e-9)
        share = f"{_mib(self.done)} of {_mib(self.total)} ({100 * self.done / self.total:.0f}%)" if self.total else _mib(
            self.done)  # fmt: skip
        return (f"{self.desc}: {share}, {_mib(self.done / seconds)}/s, {self.docs:,} docs "
                f"({self.docs / seconds:,.0f}/s), ETA {eta(self.done, self.total, seconds)}")  # fmt: skip

    def close(self) -> None:
        rate = self.docs / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.docs} docs, {rate:,.0f} docs/s", refresh=False)
        self.bar.close()
        if self.lines:
            log.info("%s (done)", self.line())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
