"""What one retrieve Task may take from its source: time, throughput and bytes.

A ``TaskGuard`` is made per run of a Task and watches every response body of it, JSON
(QIDO, metadata) and pixel data alike, on every arrival of bytes: a cancel, the Task's
deadline, the throughput floor and the byte budget are checked there, not only between
instances. A body that sends nothing at all is ended by the client's per-read idle
timeout, so no check waits longer than ``read_timeout``.

Issue 15, item 10: a source sending 1 byte per second held a worker until the 6 h job
timeout, and a cancel was noticed only between parts.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .budget import ByteBudget
from .client import SourceError

CHECK_INTERVAL = 0.5  # seconds between two cancel checks while bytes keep arriving


class Cancelled(Exception):
    """The Task was cancelled (or another series of it stopped the transfer)."""


class Abandoned(SourceError):
    """The transfer stops as a whole: asking again, instance by instance, would cost as much
    again for each. ``public()`` is the Task's statusReason."""

    reason = "the transfer was abandoned"

    def __init__(self, message: str):
        super().__init__(message, category=self.reason)

    def public(self) -> str:
        return self.reason


class TooSlow(Abandoned):
    reason = "the source could not be reached (slower than the configured minimum throughput)"


class PastDeadline(Abandoned):
    reason = "the transfer took longer than the configured deadline (transfer.task_deadline)"


class OverBudget(Abandoned):
    reason = ("the source sent more bytes than the study's byte budget (twice what its metadata "
              "announces, at most transfer.max_task_bytes)")


@dataclass
class GuardLimits:
    min_throughput: int = 64 * 1024  # bytes/s a body must average over throughput_window (0: off)
    throughput_window: float = 30.0
    task_deadline: float = 7200.0  # seconds for one run of a Task (0: none)


class TaskGuard:
    """The limits of one Task run, shared by its threads; the first one to trip stops them all."""

    def __init__(self, limits: GuardLimits, budget: ByteBudget,
                 should_stop: Callable[[], bool] = lambda: False,
                 monotonic: Callable[[], float] = time.monotonic):
        self.limits, self.budget = limits, budget
        self.should_stop, self.monotonic = should_stop, monotonic
        self.started = monotonic()
        self.stop_event = threading.Event()

    def check(self) -> None:
        """Raise Cancelled when the Task was cancelled or stopped, PastDeadline after its deadline."""
        if self.stop_event.is_set() or self.should_stop():
            self.stop_event.set()
            raise Cancelled()
        elapsed = self.monotonic() - self.started
        if self.limits.task_deadline and elapsed > self.limits.task_deadline:
            self.abandon(PastDeadline(f"the transfer ran {elapsed:.1f} s, longer than "
                                      f"{self.limits.task_deadline:g} s"))

    def abandon(self, error: Abandoned) -> None:
        self.stop_event.set()  # the other threads stop at their next check
        raise error

    def watch(self, chunks: Iterable[bytes], charged: bool = False) -> Iterator[bytes]:
        """The chunks of one body, checked as they arrive; ``charged`` bodies count against
        the byte budget (pixel data: what may reach the staging files)."""
        floor = ThroughputFloor(self.limits.min_throughput, self.limits.throughput_window)
        last_check = float("-inf")
        for chunk in chunks:
            now = self.monotonic()
            if now - last_check >= CHECK_INTERVAL:
                self.check()
                last_check = now
            if charged:
                self.charge(len(chunk))
            slow = floor.add(len(chunk), now)
            if slow:
                self.abandon(TooSlow(slow))
            yield chunk

    def charge(self, size: int) -> None:
        if not self.budget.charge(size):
            self.abandon(OverBudget(f"the source sent {self.budget.spent} bytes, more than the "
                                    f"budget of {self.budget.limit()} bytes"))


class ThroughputFloor:
    """Bytes per second averaged over windows of ``window`` seconds, each starting with an
    arrival: a slow first byte (an archive fetching from cold storage) is the idle timeout's
    business, not the floor's."""

    def __init__(self, min_throughput: int, window: float):
        self.min_throughput, self.window = min_throughput, window
        self.start: float | None = None
        self.bytes = 0

    def add(self, size: int, now: float) -> str | None:
        """Count an arrival; a message when the window just closed below the floor."""
        if not self.min_throughput:
            return None
        if self.start is None:
            self.start = now
        self.bytes += size
        elapsed = now - self.start
        if elapsed < self.window:
            return None
        if self.bytes / elapsed < self.min_throughput:
            return f"the source sent {self.bytes} bytes in {elapsed:.1f} s, less than {self.min_throughput} bytes/s"
        self.start, self.bytes = now, 0
        return None


def first_cause(errors: Iterable[BaseException | None]) -> BaseException | None:
    """The error that stopped a transfer, not the other threads' Cancelled that it set off."""
    found = [e for e in errors if e is not None]
    return min(found, key=lambda e: isinstance(e, Cancelled)) if found else None
