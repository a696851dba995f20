"""Transfer step durations, fed from the Task versions that end a run.

A retrieve Task's last write of a run (tasks.finish) sets its final status and records each
step's duration in Task.output. At each scrape the versions written since the last fold are
read along the change sequence (resource_version.seq), and each version that moved a Task
from an active status to completed or failed with durations is observed once. The
position is shared by the processes of one server (a file under the multiprocess
directory, under a lock), so whichever worker answers a scrape, every such version is
counted exactly once in the histogram the scrape adds up. A scrape that finds another
folding does not wait: it shows what is counted so far.
"""
from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import orjson
from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Engine

from ..store.schema import resource_version
from ..transfer.pipeline import STEPS
from ..transfer.tasks import ACTIVE_STATUSES
from ..transfer.taskoutput import output_value

ENDED = frozenset({"completed", "failed"})
BATCH = 500
MAX_BATCHES = 20  # per scrape; a larger backlog is taken up by the next scrapes


class Position:
    """Where the fold stands on the change sequence."""

    def __init__(self, seq: int):
        self.seq = seq


class MemoryCursor:
    """The position of one process (the dev server, tests)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.position: Position | None = None

    def start_at(self, seq: int) -> None:
        with self.lock:
            if self.position is None:
                self.position = Position(seq)

    @contextmanager
    def claim(self) -> Iterator[Position | None]:
        if not self.lock.acquire(blocking=False):
            yield None  # another thread is folding
            return
        try:
            if self.position is None:
                self.position = Position(0)
            yield self.position
        finally:
            self.lock.release()


class FileCursor:
    """The position shared by a server's worker processes, in ``steps.cursor``; ``steps.lock``
    (flock) keeps two folds apart, in one process or several."""

    def __init__(self, directory: str | os.PathLike):
        self.path = Path(directory) / "steps.cursor"
        self.lock_path = Path(directory) / "steps.lock"

    def start_at(self, seq: int) -> None:
        """Only the first process of the server sets it (the master, before forking)."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as fh:
            fh.write(str(seq))

    @contextmanager
    def claim(self) -> Iterator[Position | None]:
        with open(self.lock_path, "a") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield None  # another process is folding: this scrape shows what it has
                return
            try:
                position = Position(self.read())
                before = position.seq
                yield position
                if position.seq != before:
                    self.write(position.seq)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def read(self) -> int:
        try:
            return int(self.path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def write(self, seq: int) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(str(seq))
        os.replace(temporary, self.path)


def latest_seq(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.max(resource_version.c.seq))).scalar() or 0)


def durations_of(task: dict) -> dict[str, float]:
    """Each step's seconds from Task.output (duration-qido, -metadata, -retrieve, -total)."""
    found = {}
    for step in (*STEPS, "total"):
        value = output_value(task, f"duration-{step}")
        if isinstance(value, (int, float)) and value >= 0:
            found[step] = float(value)
    return found


class StepDurations:
    def __init__(self, engine: Engine, histogram, cursor: MemoryCursor | FileCursor):
        self.engine, self.histogram, self.cursor = engine, histogram, cursor

    def fold(self) -> int:
        """Observe the runs that ended since the last fold; returns how many."""
        ended = 0
        with self.cursor.claim() as position:
            if position is None:
                return 0
            for _ in range(MAX_BATCHES):
                rows = self.task_versions_after(position.seq)
                ended += self.observe(rows)
                if rows:
                    position.seq = rows[-1].seq
                if len(rows) < BATCH:
                    break
        return ended

    def task_versions_after(self, seq: int) -> list:
        rv = resource_version
        with self.engine.connect() as conn:
            return conn.execute(select(rv.c.seq, rv.c.res_id, rv.c.version, rv.c.content)
                                .where(rv.c.res_type == "Task", rv.c.seq > seq)
                                .order_by(rv.c.seq).limit(BATCH)).all()

    def observe(self, rows: list) -> int:
        candidates = []
        for row in rows:
            task = orjson.loads(row.content) if row.content else {}
            if task.get("status") in ENDED and row.version > 1:
                durations = durations_of(task)
                if durations:
                    candidates.append((row, task["status"], durations))
        before = self.statuses_before([(row.res_id, row.version - 1) for row, _, _ in candidates])
        ended = 0
        for row, status, durations in candidates:
            if before.get((row.res_id, row.version - 1)) in ACTIVE_STATUSES:  # a later edit is no new run
                for step, seconds in durations.items():
                    self.histogram.labels(step, status).observe(seconds)
                ended += 1
        return ended

    def statuses_before(self, keys: list[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
        """The status of each (Task id, version), 100 to a query (SQLite bounds expression depth)."""
        rv = resource_version
        found = {}
        with self.engine.connect() as conn:
            for start in range(0, len(keys), 100):
                wanted = or_(*(and_(rv.c.res_id == res_id, rv.c.version == version)
                               for res_id, version in keys[start:start + 100]))
                for r in conn.execute(select(rv.c.res_id, rv.c.version, rv.c.content)
                                      .where(rv.c.res_type == "Task", wanted)):
                    found[(r.res_id, r.version)] = orjson.loads(r.content).get("status") if r.content else None
        return found
