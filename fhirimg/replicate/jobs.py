"""RQ entry points: each configured link runs as a job that schedules its own next run.

``replicate_link_job`` is a thin wrapper over runner.run_link_once. ``prepare_worker``
(called when ``fhirimg worker`` starts) makes sure every enabled link has a waiting job;
each run ends by scheduling the next one ``interval`` seconds later with the worker's
scheduler (``enqueue_in``). A Redis lock per link keeps two chains from running the same
link at once; the database cursor's compare-and-set keeps even that case correct.
"""
from __future__ import annotations

import logging
import os
import uuid
from datetime import timedelta

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from .runner import Site, run_link_once
from .settings import configured_links

log = logging.getLogger("fhirimg.replicate")
QUEUE = "fhirimg"
WAITING = frozenset({JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED,
                     JobStatus.CREATED})
_runtime: dict = {}


def next_key(name: str) -> str:
    return f"fhirimg:replicate:{name}:next-job"


def lock_key(name: str) -> str:
    return f"fhirimg:replicate:{name}:running"


def replicate_link_job(name: str) -> str:
    """RQ job: run link `name` once, then schedule its next run."""
    config = worker_config()
    connection = Redis.from_url(config["redis_url"])
    link = {link.name: link for link in configured_links(config)}.get(name)
    if link is None or not link.enabled:
        return f"link {name} is no longer configured; not rescheduled"
    lock = connection.set(lock_key(name), os.getpid(), nx=True, ex=int(link.interval) + 3600)
    if not lock:
        return f"link {name} is already running elsewhere; this chain stops"
    try:
        result = run_link_once(site_for(config), link)
    finally:
        connection.delete(lock_key(name))
        schedule(connection, name, link.interval)
    return repr(result)


def schedule(connection: Redis, name: str, delay: float) -> Job:
    queue = Queue(QUEUE, connection=connection)
    job_id = f"fhirimg-replicate-{name}-{uuid.uuid4().hex[:12]}"
    if delay <= 0:
        job = queue.enqueue(replicate_link_job, name, job_id=job_id, result_ttl=600, failure_ttl=86_400)
    else:
        job = queue.enqueue_in(timedelta(seconds=delay), replicate_link_job, name, job_id=job_id,
                               result_ttl=600, failure_ttl=86_400)
    connection.set(next_key(name), job.id)
    return job


def has_waiting_job(connection: Redis, name: str) -> bool:
    job_id = connection.get(next_key(name))
    if not job_id:
        return False
    try:
        return Job.fetch(job_id.decode(), connection=connection).get_status() in WAITING
    except NoSuchJobError:
        return False


def prepare_worker(config: dict, connection: Redis) -> list[str]:
    """Start the chain of every enabled link that has none waiting; returns their names."""
    _runtime["config"] = config
    started = []
    for link in configured_links(config):
        if link.enabled and not has_waiting_job(connection, link.name):
            schedule(connection, link.name, 0)
            started.append(link.name)
    if started:
        log.info("replication links scheduled: %s", ", ".join(started))
    return started


def worker_config() -> dict:
    if "config" not in _runtime:
        from ..config import load_config
        _runtime["config"] = load_config()
    return _runtime["config"]


def site_for(config: dict) -> Site:
    key = ("site", os.getpid(), config["database_url"])
    if key not in _runtime:
        _runtime[key] = Site(config)
    return _runtime[key]
