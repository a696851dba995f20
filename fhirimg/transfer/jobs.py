"""RQ entry points and the reconciler: the queue is transport, the Task is the truth.

``retrieve_job`` is a one-line wrapper over tasks.run_retrieve. ``enqueue_retrieve``
puts a Task's job on the routine or the urgent queue. ``reconcile`` walks the
active_retrieve table and re-enqueues every Task that is requested or in-progress but
has neither a waiting job nor a fresh worker heartbeat — after Redis lost its data or a
worker died, no study is forgotten. The worker runs it at start-up and periodically.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import select, update

from fhirimg.blobs.store import make_blobstore
from fhirimg.dimse.scu import scu_settings
from fhirimg.store import Repository, create_schema, make_engine

from .client import TransferClient
from .rules import apply_rules
from .schema import active_retrieve
from .settings import (client_settings, own_dicomweb_base, queue_for, retrieve_options,
                       transfer_section)
from .tasks import ACTIVE_STATUSES, TransferContext, release_active, run_retrieve

log = logging.getLogger("fhirimg.transfer")
JOB_PREFIX = "fhirimg-retrieve-"
WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED})

# Per process: the configuration the worker was started with; engines are made per pid
# because RQ forks a work horse per job and a forked child must not reuse the parent's sockets.
_runtime: dict = {}


def retrieve_job(task_id: str) -> str:
    """RQ job: carry out one retrieve Task."""
    return run_with_context(task_id, run_retrieve)


def run_with_context(task_id: str, run: Callable[[str, TransferContext], str]) -> str:
    ctx = worker_context(worker_config())
    ctx.progress = progress_to_redis()
    try:
        return run(task_id, ctx)
    finally:
        ctx.client.close()


def progress_to_redis():
    """Live progress goes to the Redis this job came from (the console reads it there)."""
    from rq import get_current_job
    from .progress import redis_publisher
    job = get_current_job()
    if job is None:
        return None
    return lambda task_id: redis_publisher(job.connection, task_id)


def use_config(config: dict) -> None:
    _runtime["config"] = config


def worker_config() -> dict:
    if "config" not in _runtime:
        from fhirimg.config import load_config
        _runtime["config"] = load_config()
    return _runtime["config"]


def process_engine(config: dict):
    key = ("engine", os.getpid(), config["database_url"])
    if key not in _runtime:
        _runtime[key] = make_engine(config["database_url"])
        create_schema(_runtime[key])  # idempotent: a worker may start before the server
    return _runtime[key]


def worker_context(config: dict) -> TransferContext:
    """Storage, HTTP client and blob store of this process, built from the configuration."""
    section = transfer_section(config)
    engine = process_engine(config)
    return TransferContext(repo=Repository(engine, role="fhirimg-worker"), client=TransferClient(client_settings(section)),
                           blobstore=make_blobstore(config, engine), options=retrieve_options(section),
                           own_dicomweb_base=own_dicomweb_base(config), dimse=scu_settings(config),
                           qido_page_size=section["qido_page_size"], lease_seconds=section["lease_seconds"],
                           max_runs=section["max_runs"])


def job_id_for(task_id: str) -> str:
    return JOB_PREFIX + task_id


def enqueue_retrieve(connection: Redis, section: dict, repo: Repository, task_id: str, priority: str) -> Job:
    """Put the Task's job on its queue and note when (the Task itself is already stored)."""
    queue = Queue(queue_for(section, priority), connection=connection)
    job = queue.enqueue_call("fhirimg.transfer.jobs.retrieve_job", args=(task_id,), job_id=job_id_for(task_id),
                             timeout=section["job_timeout"], result_ttl=24 * 3600, failure_ttl=7 * 24 * 3600,
                             description=f"retrieve Task/{task_id}")
    with repo.transaction() as uow:
        uow.conn.execute(update(active_retrieve).where(active_retrieve.c.task_id == task_id)
                         .values(enqueued_ms=repo.clock()))
    return job


def has_live_job(connection: Redis, task_id: str, now_s: float, lease_seconds: float) -> bool:
    """A job still waiting in Redis, or one a worker took so recently it may not have beaten yet."""
    try:
        job = Job.fetch(job_id_for(task_id), connection=connection)
    except NoSuchJobError:
        return False
    status = job.get_status(refresh=False)
    if status in WAITING:
        return True
    if status == JobStatus.STARTED and job.started_at is not None:
        return now_s - job.started_at.timestamp() < lease_seconds
    return False


def reconcile(repo: Repository, connection: Redis, section: dict) -> list[str]:
    """Re-enqueue every active retrieve Task without a live job; returns their ids."""
    with repo.reading() as uow:
        rows = uow.conn.execute(select(active_retrieve)).all()
    now_ms, lease_ms = repo.clock(), section["lease_seconds"] * 1000
    requeued = []
    for row in rows:
        if row.heartbeat_ms is not None and now_ms - row.heartbeat_ms < lease_ms:
            continue  # a worker is on it (and releases the row itself, even when cancelled)
        task = repo.read("Task", row.task_id)
        if task is None or task.is_deleted or task.resource.get("status") not in ACTIVE_STATUSES:
            release_active(repo, row.task_id)  # cancelled before any worker saw it, or deleted
            continue
        if has_live_job(connection, row.task_id, time.time(), section["lease_seconds"]):
            continue
        enqueue_retrieve(connection, section, repo, row.task_id, task.resource.get("priority", "routine"))
        requeued.append(row.task_id)
    if requeued:
        log.warning("reconciler re-enqueued %d retrieve Task(s) that had no live job: %s",
                    len(requeued), ", ".join(requeued))
    return requeued


class Reconciler:
    """Runs ``reconcile`` now and then every ``interval`` seconds in a daemon thread of the worker."""

    def __init__(self, config: dict, connection: Redis):
        self.config, self.connection = config, connection
        self.section = transfer_section(config)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="transfer-reconciler", daemon=True)

    def start(self) -> "Reconciler":
        self.run_once()
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.wait(self.section["reconcile_interval"]):
            self.run_once()

    def run_once(self) -> list[str]:
        try:
            engine = process_engine(self.config)
            blobstore = make_blobstore(self.config, engine)
            blobstore.sweep_staging(self.section["staging_max_age"])
            repo = Repository(engine, role="fhirimg-worker")
            # New Tasks from the auto-retrieve rules have no job yet: reconcile enqueues them.
            apply_rules(repo, blobstore, self.section["rules"], own_dicomweb_base(self.config))
            return reconcile(repo, self.connection, self.section)
        except (RedisError, OSError) as exc:
            log.warning("transfer reconciler: Redis or storage unavailable, will retry: %s", exc)
        except Exception:  # noqa: BLE001 - the loop must survive to try again
            log.exception("transfer reconciler failed; will retry")
        return []


def prepare_worker(config: dict, connection: Redis) -> Reconciler:
    """Called by the worker process before it starts taking jobs."""
    use_config(config)
    # The reconciler gets its own Redis client: its socket is never shared with a forked job.
    own = Redis.from_url(config["redis_url"])
    return Reconciler(config, own).start()
