"""Figures too costly to read at every scrape (sums over every stored instance or ended
Task), recomputed in the background at most every ``[metrics] cache_seconds``.

A scrape reads the last value and never waits for a new one, except the very first of a
server. Under gunicorn the value is kept in the multiprocess directory, so one process of
the server recomputes it (the one that holds the flock) and all of them answer with it.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("fhirimg.metrics")


class SharedValue:
    def __init__(self, compute: Callable[[], object], seconds: float, directory: str | None = None,
                 name: str = "totals", clock: Callable[[], float] = time.time):
        self.compute, self.seconds, self.clock = compute, seconds, clock
        self.path = Path(directory) / f"{name}.json" if directory else None
        self.memory: list | None = None  # [computed at, value] without a directory
        self.local = threading.Lock()  # one refresh at a time in this process
        self.refresher: threading.Thread | None = None

    def get(self):
        stored = self.load()
        if stored is None:  # the first scrape of the server: nothing to show yet but this
            self.refresh()
            stored = self.load()
        elif self.is_stale(stored) and (self.refresher is None or not self.refresher.is_alive()):
            self.refresher = threading.Thread(target=self.refresh_quietly, name="fhirimg-metrics-refresh",
                                              daemon=True)
            self.refresher.start()
        return None if stored is None else stored[1]

    def is_stale(self, stored: list) -> bool:
        return self.clock() - stored[0] >= self.seconds

    def refresh(self) -> None:
        with self.exclusive() as mine:
            if not mine:
                return  # another process is computing it
            stored = self.load()
            if stored is None or self.is_stale(stored):
                self.store([self.clock(), self.compute()])

    def refresh_quietly(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # noqa: BLE001 - the last value stays; the next scrape tries again
            log.warning("metrics: could not recompute %s: %s: %s", self.path or "totals", type(exc).__name__, exc)

    @contextmanager
    def exclusive(self) -> Iterator[bool]:
        with self.local:
            if self.path is None:
                yield True
                return
            with open(self.path.with_suffix(".lock"), "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def load(self) -> list | None:
        if self.path is None:
            return self.memory
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def store(self, stored: list) -> None:
        if self.path is None:
            self.memory = stored
            return
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(stored))
        os.replace(temporary, self.path)
