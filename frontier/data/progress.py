"""A tqdm bar on stderr showing bytes/s with documents and docs/s beside it.

tqdm shows one rate; documents are a second counter, refreshed in the postfix at most twice a
second so updating per document stays cheap. Set TQDM_DISABLE=1 to silence every bar.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from tqdm import tqdm


def progress_enabled() -> bool:
    """False when TQDM_DISABLE is set. tqdm itself reads it once, at import; reading it per bar
    lets a caller (or a test) change it later."""
    return os.environ.get("TQDM_DISABLE", "") in ("", "0")


class Progress:
    def __init__(self, desc: str, total_bytes: int | None = None) -> None:
        self.bar = tqdm(
            total=total_bytes or None,
            desc=desc,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=sys.stderr,
            mininterval=0.5,
            dynamic_ncols=True,
            disable=not progress_enabled(),
        )
        self.docs = 0
        self.start = time.perf_counter()
        self._last = 0.0

    def update(self, *, nbytes: int = 0, ndocs: int = 0, position: int | None = None) -> None:
        """Advance by `nbytes` (or to absolute byte `position`) and `ndocs` documents."""
        if position is not None:
            nbytes = position - self.bar.n
        if nbytes:
            self.bar.update(nbytes)
        self.docs += ndocs
        now = time.perf_counter()
        if now - self._last > 0.5:
            self._last = now
            rate = self.docs / max(now - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.docs} docs, {rate:,.0f} docs/s", refresh=False)

    def close(self) -> None:
        rate = self.docs / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(f"{self.docs} docs, {rate:,.0f} docs/s", refresh=False)
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
