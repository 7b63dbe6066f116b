"""The next step's batches, built in a background thread while the current step runs.

What is prefetched is exactly what the loop would build itself: ``make(step)`` for the steps in
order, so the batches stay a pure function of (seed, step, rank) and resuming stays exact. When
the loop asks for another step than the one prepared (a rollback or a resume rewinds it), the
thread is restarted at that step. On CUDA the tensors are copied into pinned memory and sent to
the device with non-blocking copies: a blocking host-to-device copy waits for everything queued
on the stream, which is a host sync per micro-batch. The local count of non-masked targets is
taken on the host before the copy, for the same reason.

The thread never outlives its Prefetcher: ``close`` (also on ``with`` exit, exception or stop
signal) tells it to stop, drains what it holds and joins it; it is a daemon thread and waits in
short timeouts, so it can neither hang the process's exit nor miss the stop.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from frontier.errors import FrontierError
from frontier.train.batches.data import Batch, local_targets

_POLL_S = 0.05  # how often a waiting thread looks at the stop flag


@dataclass
class StepBatches:
    batches: list[Batch]  # this rank's micro-batches of one step, on the device
    targets: int  # their non-masked tokens, counted on the host


def load_step(make: Callable[[int], list[Batch]], step: int, device: torch.device) -> StepBatches:
    """The batches of `step` on `device` (what the thread prepares; also the synchronous path)."""
    batches = make(step)
    targets = local_targets(batches)
    if device.type == "cuda":
        batches = [_to_device(b, device) for b in batches]
    return StepBatches(batches=batches, targets=targets)


def _to_device(batch: Batch, device: torch.device) -> Batch:
    moved = {
        f.name: getattr(batch, f.name).pin_memory().to(device, non_blocking=True)
        for f in dataclasses.fields(batch)
        if torch.is_tensor(getattr(batch, f.name))
    }
    return dataclasses.replace(batch, **moved)


class Prefetcher:
    """Steps [start, end) of `make`, one thread ahead; `get(step)` returns them in any order of asking."""

    def __init__(self, make: Callable[[int], list[Batch]], device: torch.device, end: int, depth: int = 1) -> None:
        self.make = make
        self.device = device
        self.end = end
        self.depth = depth
        self._next: int | None = None  # the step the queue's head holds
        self._stop = threading.Event()
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue(maxsize=depth)
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def get(self, step: int) -> StepBatches:
        """The batches of `step`; raises what the thread raised while building them."""
        if step >= self.end:
            return load_step(self.make, step, self.device)
        if self._next != step or self._thread is None:
            self._restart(step)
        while True:
            try:
                got, item = self._queue.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if self._thread is not None and not self._thread.is_alive() and self._queue.empty():
                    raise FrontierError(f"prefetch: the batch thread ended before step {step}") from None
        if got != step:  # cannot happen: the thread produces steps in order from the restart point
            raise FrontierError(f"prefetch: expected the batches of step {step}, got step {got}")
        if isinstance(item, BaseException):
            self._next = None  # the thread has ended: a later get restarts it
            raise item
        self._next = step + 1
        return item

    def _restart(self, step: int) -> None:
        self.close()
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.depth)
        self._next = step
        self._thread = threading.Thread(
            target=self._work, args=(step, self._stop, self._queue), name="frontier-prefetch", daemon=True
        )
        self._thread.start()

    def _work(self, start: int, stop: threading.Event, out: queue.Queue[tuple[int, Any]]) -> None:
        for step in range(start, self.end):
            if stop.is_set():
                return
            try:
                item: Any = load_step(self.make, step, self.device)
            except BaseException as exc:  # handed to the loop, which raises it in its own thread
                item = exc
            while not stop.is_set():
                try:
                    out.put((step, item), timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if isinstance(item, BaseException):
                return

    def close(self) -> None:
        """Stop the thread and wait for it (it notices within one poll, or after the batch it is building)."""
        thread, self._thread = self._thread, None
        self._next = None
        if thread is None:
            return
        self._stop.set()
        while thread.is_alive():
            _drain(self._queue)  # a thread blocked on a full queue moves on to its stop check
            thread.join(timeout=_POLL_S)
        _drain(self._queue)


def _drain(q: queue.Queue[Any]) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
