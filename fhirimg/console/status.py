"""What the console shows besides FHIR: RQ workers and queues, replication links.

Plain functions over a Redis connection and the configuration, so the views stay thin and
the figures can be tested without HTTP.
"""
from __future__ import annotations

from datetime import datetime, timezone


def queue_names(config: dict) -> list[str]:
    """The queues workers take jobs from, in their order (urgent first), plus replication's."""
    from ..replicate.jobs import QUEUE as REPLICATION_QUEUE
    names = list(config["worker"]["queues"])
    return names + [REPLICATION_QUEUE] if REPLICATION_QUEUE not in names else names


def queues_and_workers(connection, names: list[str], now: datetime | None = None) -> dict:
    """Each queue's depth, the age of its oldest waiting job and its registries; each
    worker's state, current job and last heartbeat."""
    from rq import Queue, Worker
    now = now or datetime.now(timezone.utc)
    queues = [queue_row(Queue(name, connection=connection), now) for name in names]
    workers = [worker_row(worker, now) for worker in Worker.all(connection=connection)]
    return {"queues": queues, "workers": sorted(workers, key=lambda w: w["name"])}


def queue_row(queue, now: datetime) -> dict:
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry
    oldest = None
    first = queue.get_job_ids(0, 1)
    job = queue.fetch_job(first[0]) if first else None
    if job is not None and job.enqueued_at is not None:
        oldest = round(seconds_between(job.enqueued_at, now), 1)
    return {"name": queue.name, "waiting": queue.count, "oldest_wait_seconds": oldest,
            "running": StartedJobRegistry(queue=queue).count, "failed": FailedJobRegistry(queue=queue).count,
            "scheduled": ScheduledJobRegistry(queue=queue).count}


def worker_row(worker, now: datetime) -> dict:
    job = worker.get_current_job()
    beat = worker.last_heartbeat
    return {"name": worker.name, "state": str(worker.get_state()), "queues": worker.queue_names(),
            "current_job": job.description if job is not None else None,
            "seconds_since_heartbeat": round(seconds_between(beat, now), 1) if beat else None,
            "successful": worker.successful_job_count, "failed": worker.failed_job_count}


def seconds_between(then: datetime, now: datetime) -> float:
    if then.tzinfo is None:  # rq stores UTC without a zone
        then = then.replace(tzinfo=timezone.utc)
    return max(0.0, (now - then).total_seconds())


def replication_links(engine, config: dict, live: bool) -> list[dict]:
    """`fhirimg replicate status` as JSON; `live` asks pull sources how far behind we are."""
    from ..replicate.client import RetryPolicy
    from ..replicate.settings import configured_links, replicate_section
    from ..replicate.status import link_statuses
    section = replicate_section(config)
    links = {link.name: link for link in configured_links(config)}
    return [row.to_json() for row in link_statuses(engine, links, RetryPolicy.from_section(section), live=live)]
