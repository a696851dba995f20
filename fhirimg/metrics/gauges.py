"""What /metrics reads at scrape time: Task counts by status, queue depths, replication
lag per link, and what the blob store holds.

Each figure is read from where it is kept (the database, Redis, the file system), so every
worker gives the same answer. Active Tasks are counted at each scrape (an index range over
few rows), queues in one Redis round trip, links from their few rows. The totals that grow
for ever - ended Tasks, the blob store's bytes and instances, each a scan of every row -
are recomputed in the background at most every ``[metrics] cache_seconds`` (fhirimg.metrics.cache).
A source that cannot be read leaves its figures out and shows ``fhirimg_metrics_source_up 0``.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from ..replicate.schema import replication_link
from ..search.tables import search_token
from ..transfer.schema import dicom_instance
from .cache import SharedValue

log = logging.getLogger("fhirimg.metrics")

# Task.status (R5 task-status): every code is shown, 0 when no Task has it, so that an alert
# on "failed" has a series to watch before the first failure.
ACTIVE_TASK_STATUSES = ("draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold")
ENDED_TASK_STATUSES = ("rejected", "cancelled", "failed", "completed", "entered-in-error")
JOB_STATES = ("queued", "started", "scheduled", "deferred", "failed")
CHANGE_OUTCOMES = ("applied", "skipped", "conflicts", "rejected")


class AppGauges:
    """A prometheus_client collector (``collect``) over the server's state."""

    def __init__(self, engine: Engine, redis: Callable[[], object | None], queues: list[str], blob_root: str,
                 cache_seconds: float, directory: str | None = None, clock: Callable[[], float] = time.time):
        self.engine, self.redis, self.queues, self.blob_root, self.clock = engine, redis, queues, blob_root, clock
        self.totals = SharedValue(self.read_totals, cache_seconds, directory)
        self.source_up: dict[str, bool] = {}

    def collect(self) -> Iterator:
        started = time.perf_counter()
        families, up = [], GaugeMetricFamily("fhirimg_metrics_source_up", "Whether /metrics could read a "
                                             "source of its figures at this scrape (1) or not (0).", labels=["source"])
        for source, read in (("database", self.database_families), ("redis", self.queue_families),
                             ("blob_store", self.filesystem_families)):
            try:
                families += read()
                self.note(source, True)
            except Exception as exc:  # noqa: BLE001 - a scrape shows what it can
                self.note(source, False, exc)
            if source != "redis" or self.redis() is not None:
                up.add_metric([source], 1.0 if self.source_up[source] else 0.0)
        yield from families
        yield up
        yield GaugeMetricFamily("fhirimg_metrics_collect_seconds", "Time this scrape spent reading the "
                                "database, Redis and the blob store.", value=time.perf_counter() - started)

    def note(self, source: str, ok: bool, exc: Exception | None = None) -> None:
        """Log when a source stops (or starts again) answering, not at every scrape."""
        if self.source_up.get(source, True) and not ok:
            log.warning("metrics: cannot read the %s: %s: %s", source, type(exc).__name__, str(exc)[:300])
        elif ok and self.source_up.get(source) is False:
            log.info("metrics: the %s answers again", source)
        self.source_up[source] = ok

    # -- the database --------------------------------------------------------------------
    def database_families(self) -> list:
        with self.engine.connect() as conn:
            counts = task_counts(conn, ACTIVE_TASK_STATUSES)
            links = conn.execute(select(replication_link)).all()
        totals = self.totals.get() or {}
        counts.update(totals.get("tasks") or {})
        tasks = GaugeMetricFamily("fhirimg_tasks", "Tasks by status (live, not deleted); the ended ones "
                                  "(completed, failed, ...) as of [metrics] cache_seconds ago at most.",
                                  labels=["status"])
        # The ended ones are left out (not 0) until their first total is known.
        for status in (*ACTIVE_TASK_STATUSES, *(ENDED_TASK_STATUSES if totals else ())):
            tasks.add_metric([status], float(counts.get(status, 0)))
        families = [tasks, *self.replication_families(links)]
        if totals:
            families += [GaugeMetricFamily("fhirimg_blob_store_bytes", "Bytes of the DICOM instances the blob "
                                           "store holds (from its index; as of [metrics] cache_seconds ago at "
                                           "most).", value=totals["blob_bytes"]),
                         GaugeMetricFamily("fhirimg_blob_store_instances", "DICOM instances the blob store holds.",
                                           value=totals["blob_instances"])]
        return families

    def read_totals(self) -> dict:
        """The figures that need a scan of every row (run in the background)."""
        with self.engine.connect() as conn:
            total, count = conn.execute(select(func.coalesce(func.sum(dicom_instance.c.size), 0),
                                               func.count())).one()
            return {"blob_bytes": float(total), "blob_instances": float(count),
                    "tasks": task_counts(conn, ENDED_TASK_STATUSES)}

    def replication_families(self, links: list) -> list:
        labels = ["link", "direction"]
        lag = GaugeMetricFamily("fhirimg_replication_lag_seconds", "Seconds since the link was last caught up "
                                "(every change committed before then was applied or sent); an upper bound of "
                                "its lag. Absent until the link first catches up.", labels=labels)
        success = GaugeMetricFamily("fhirimg_replication_last_success_timestamp_seconds",
                                    "When the link last ran without error (Unix time).", labels=labels)
        error = GaugeMetricFamily("fhirimg_replication_last_error_timestamp_seconds",
                                  "When the link last failed (Unix time).", labels=labels)
        changes = CounterMetricFamily("fhirimg_replication_changes", "Changes the link has handled, all time, "
                                      "by outcome.", labels=[*labels, "outcome"])
        now = self.clock()
        for link in links:
            names = [link.name, link.direction]
            if link.caught_up_ms:
                lag.add_metric(names, max(0.0, now - link.caught_up_ms / 1000))
            if link.last_success_ms:
                success.add_metric(names, link.last_success_ms / 1000)
            if link.last_error_ms:
                error.add_metric(names, link.last_error_ms / 1000)
            for outcome in CHANGE_OUTCOMES:
                changes.add_metric([*names, outcome], float(getattr(link, outcome) or 0))
        return [lag, success, error, changes]

    # -- Redis -------------------------------------------------------------------------------
    def queue_families(self) -> list:
        """Each queue's waiting jobs and its registries, in one round trip (counts only: rq's
        own ``registry.count`` would first clean the registry up, a write)."""
        connection = self.redis()
        if connection is None:
            return []
        from rq import Queue
        keys = []
        with connection.pipeline(transaction=False) as pipe:
            for name in self.queues:
                queue = Queue(name, connection=connection)
                pipe.llen(queue.key)
                for registry in (queue.started_job_registry, queue.scheduled_job_registry,
                                 queue.deferred_job_registry, queue.failed_job_registry):
                    pipe.zcard(registry.key)
                keys.append(name)
            answers = pipe.execute()
        jobs = GaugeMetricFamily("fhirimg_queue_jobs", "RQ jobs by queue and state (queued = waiting).",
                                 labels=["queue", "state"])
        for index, name in enumerate(keys):
            for offset, state in enumerate(JOB_STATES):
                jobs.add_metric([name, state], float(answers[index * len(JOB_STATES) + offset]))
        return [jobs]

    # -- the file system -------------------------------------------------------------------
    def filesystem_families(self) -> list:
        if not os.path.isdir(self.blob_root):
            return []  # no transfer has stored anything yet
        stat = os.statvfs(self.blob_root)
        return [GaugeMetricFamily("fhirimg_blob_store_free_bytes", "Bytes free for the blob store on its "
                                  "file system.", value=float(stat.f_bavail * stat.f_frsize))]


def task_counts(conn, statuses: tuple[str, ...]) -> dict[str, int]:
    """Live Tasks with these statuses (the status index: one range per status)."""
    token = search_token.c
    return dict(conn.execute(select(token.code, func.count())
                             .where(token.res_type == "Task", token.param == "status", token.code.in_(statuses))
                             .group_by(token.code)).all())


def queue_names(config: dict) -> list[str]:
    """The queues workers take jobs from (urgent first), and those transfer and replication
    put jobs on, each once."""
    from ..replicate.jobs import QUEUE as REPLICATION_QUEUE
    from ..transfer.settings import transfer_section
    section = transfer_section(config)
    names = [*config["worker"]["queues"], section["urgent_queue"], section["queue"], REPLICATION_QUEUE]
    return list(dict.fromkeys(names))
