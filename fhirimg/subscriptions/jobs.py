"""Running subscriptions in the RQ workers: a dispatcher thread, and one delivery job per
subscription at a time.

The dispatcher (a daemon thread of every ``fhirimg worker``) wakes every ``poll_interval``:
it runs the matcher to the end of the committed changes, then enqueues a delivery job for
each subscription with something due (undelivered events, a handshake, a heartbeat) that
has none queued. Everything it decides from is in the database, so after a Redis flush or
a killed worker the next wake-up enqueues again what is still due: the queue is transport.

``deliver_job`` (thin, over deliver.Deliverer) holds a per-subscription Redis lock while it
runs, so one notification per subscription is in flight; the database's compare-and-set on
``delivered`` keeps even two concurrent runs from breaking the order.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import delete

from ..store import Repository, make_engine
from .deliver import Deliverer, due_subscriptions
from .matcher import match_all
from .rules import subscription_rules
from .schema import subscription_event

log = logging.getLogger("fhirimg.subscriptions")
# Their own queue, first in a worker's list: a notification is short (bounded by its timeout)
# and must not wait behind a retrieval; `make run` also starts a worker for this queue alone.
QUEUE = "fhirimg-notify"
PRUNE_EVERY = 600.0
_runtime: dict = {}


def queued_key(sub_id: str) -> str:
    return f"fhirimg:subscription:{sub_id}:queued"


def running_key(sub_id: str) -> str:
    return f"fhirimg:subscription:{sub_id}:running"


def deliver_job(sub_id: str) -> str:
    """RQ job: deliver what is due for one subscription."""
    config = worker_config()
    connection = Redis.from_url(config["redis_url"])
    try:
        connection.delete(queued_key(sub_id))
        rules = subscription_rules(config)
        lease = lease_seconds(rules.settings.timeout)
        if not connection.set(running_key(sub_id), os.getpid(), nx=True, ex=lease):
            return f"subscription {sub_id} is being delivered elsewhere"
        try:
            engine = process_engine(config)
            # The lock is renewed after every notification: a killed job frees it within a lease.
            deliverer = Deliverer(Repository(engine, role="fhirimg-subscriptions"), rules.settings, rules.policy,
                                  own_base(config),
                                  on_progress=lambda: connection.expire(running_key(sub_id), lease))
            try:
                return repr(deliverer.deliver(sub_id))
            finally:
                deliverer.close()
        finally:
            connection.delete(running_key(sub_id))
    finally:
        connection.close()


def lease_seconds(timeout: float) -> int:
    """How long a delivery's lock lives without renewal: one POST's time limit and a margin."""
    return int(timeout * 2 + 10)


def enqueue_due(engine, connection: Redis, now_ms: int, timeout: float) -> list[str]:
    """A delivery job for each due subscription that has none queued; returns their ids."""
    queue = Queue(QUEUE, connection=connection)
    enqueued = []
    for sub_id in due_subscriptions(engine, now_ms):
        if connection.exists(running_key(sub_id)):
            continue
        if not connection.set(queued_key(sub_id), "1", nx=True, ex=lease_seconds(timeout) + 60):
            continue
        queue.enqueue(deliver_job, sub_id, result_ttl=60, failure_ttl=86_400, job_timeout=3600)
        enqueued.append(sub_id)
    return enqueued


def prune(engine, retention_days: float, now_ms: int) -> int:
    """Events older than the retention are forgotten ($events can no longer replay them)."""
    from ..replicate.links import writing
    cutoff = now_ms - int(retention_days * 86_400_000)
    with writing(engine) as conn:
        return conn.execute(delete(subscription_event).where(subscription_event.c.occurred_ms < cutoff)).rowcount


class Dispatcher:
    """Matcher and scheduler of deliveries, in a daemon thread of the worker."""

    def __init__(self, config: dict, connection: Redis, clock=time.time):
        self.config, self.connection, self.clock = config, connection, clock
        self.rules = subscription_rules(config)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="subscription-dispatcher", daemon=True)
        self.last_prune = 0.0

    def start(self) -> "Dispatcher":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.run_once()
            self.stopped.wait(self.rules.settings.poll_interval)

    def run_once(self) -> list[str]:
        try:
            engine = process_engine(self.config)
            now_ms = int(self.clock() * 1000)
            match_all(engine, now_ms)
            if self.clock() - self.last_prune > PRUNE_EVERY:
                self.last_prune = self.clock()
                prune(engine, self.rules.settings.retention_days, now_ms)
            return enqueue_due(engine, self.connection, now_ms, self.rules.settings.timeout)
        except (RedisError, OSError) as exc:
            log.warning("subscription dispatcher: Redis or storage unavailable, will retry: %s", exc)
        except Exception:  # noqa: BLE001 - the loop must survive to try again
            log.exception("subscription dispatcher failed; will retry")
        return []


def prepare_worker(config: dict, connection: Redis) -> Dispatcher:
    """Called by the worker process before it starts taking jobs."""
    _runtime["config"] = config
    if QUEUE not in config["worker"]["queues"]:
        log.warning("this worker does not take %s jobs: subscriptions are matched here but delivered only by "
                    "workers that do (worker.queues)", QUEUE)
    return Dispatcher(config, Redis.from_url(config["redis_url"])).start()


def worker_config() -> dict:
    if "config" not in _runtime:
        from ..config import load_config
        _runtime["config"] = load_config()
    return _runtime["config"]


def process_engine(config: dict):
    """One engine per process (an RQ work horse is a fork: it must not reuse its parent's)."""
    key = ("engine", os.getpid(), config["database_url"])
    if key not in _runtime:
        _runtime[key] = make_engine(config["database_url"])
    return _runtime[key]


def own_base(config: dict) -> str:
    from ..auth.cli import default_base
    return default_base(config).rstrip("/")
