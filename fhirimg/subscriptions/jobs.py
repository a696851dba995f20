"""Running subscriptions in the RQ workers: a dispatcher thread, and one delivery job per
subscription at a time.

The dispatcher (a daemon thread of every ``fhirimg worker``) wakes every ``poll_interval``:
it runs the matcher to the end of the committed changes, then enqueues a delivery job for
each subscription with something due (undelivered events, a handshake, a heartbeat) that
has none queued. Everything it decides from is in the database, so after a Redis flush or
a killed worker the next wake-up enqueues again what is still due: the queue is transport.

``deliver_job`` (thin, over deliver.Deliverer) takes up to 16 due subscriptions and delivers
each in its own thread under a per-subscription Redis lock, so one notification per
subscription is in flight and a slow endpoint holds only its own thread; the database's
compare-and-set on ``delivered`` keeps even two concurrent runs from breaking the order.
(One job per subscription cost a fork and a database connection per delivery: at 50
events/s a worker fell a minute behind.)
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import delete

from ..store import Repository
from ..transfer.jobs import process_engine, use_config, worker_config
from .deliver import Deliverer, scan_subscriptions
from .matcher import match_all
from .rules import subscription_rules
from .schema import subscription_event, subscription_state

log = logging.getLogger("fhirimg.subscriptions")
# Their own queue, first in a worker's list: a notification is short (bounded by its timeout)
# and must not wait behind a retrieval; `make run` also starts a worker for this queue alone.
QUEUE = "fhirimg-notify"
PRUNE_EVERY = 600.0
SCAN_EVERY = 1.0
LEADER_KEY = "fhirimg:subscriptions:dispatcher"
LEADER_SECONDS = 3
BATCH = 16  # subscriptions per delivery job, one thread each
DELIVERY_BUDGET = 30.0  # seconds one subscription may keep its thread; the rest waits for the next job


def queued_key(sub_id: str) -> str:
    return f"fhirimg:subscription:{sub_id}:queued"


def running_key(sub_id: str) -> str:
    return f"fhirimg:subscription:{sub_id}:running"


def deliver_job(sub_ids: list[str] | str) -> str:
    """RQ job: deliver what is due for some subscriptions, each in a thread of its own (a slow
    endpoint holds only its own thread), each under its own lock."""
    sub_ids = [sub_ids] if isinstance(sub_ids, str) else list(sub_ids)
    config = worker_config()
    connection = Redis.from_url(config["redis_url"])
    try:
        for sub_id in sub_ids:
            connection.delete(queued_key(sub_id))
        rules = subscription_rules(config)
        repo = Repository(process_engine(config), role="fhirimg-subscriptions")
        base = own_base(config)

        def one(sub_id: str) -> str:
            lease = lease_seconds(rules.settings.timeout)
            token = f"{os.getpid()}:{threading.get_ident()}:{time.time_ns()}"
            if not connection.set(running_key(sub_id), token, nx=True, ex=lease):
                return f"{sub_id}: being delivered elsewhere"
            stop = threading.Event()
            renewer = threading.Thread(target=renew, args=(connection, running_key(sub_id), token, lease, stop),
                                       daemon=True)
            renewer.start()
            deliverer = Deliverer(repo, rules.settings, rules.policy, base)
            try:
                return f"{sub_id}: {deliverer.deliver(sub_id, budget_seconds=DELIVERY_BUDGET)!r}"
            finally:
                stop.set()
                deliverer.close()
                release(connection, running_key(sub_id), token)

        with ThreadPoolExecutor(max_workers=min(len(sub_ids), BATCH)) as pool:
            return "\n".join(pool.map(one, sub_ids))
    finally:
        connection.close()


def renew(connection: Redis, key: str, token: str, lease: int, stop: threading.Event) -> None:
    """Keep a delivery's lock while it runs (a POST may take the whole timeout), and only
    while it is still this delivery's."""
    while not stop.wait(lease / 3):
        try:
            if connection.get(key) != token.encode():
                return
            connection.expire(key, lease)
        except (RedisError, OSError):
            return


RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


def release(connection: Redis, key: str, token: str) -> None:
    """Delete the lock only if it is still ours (after an expiry another delivery may hold it)."""
    try:
        connection.eval(RELEASE, 1, key, token)
    except (RedisError, OSError):
        pass


def lease_seconds(timeout: float) -> int:
    """How long a delivery's lock lives without renewal: one POST's time limit and a margin."""
    return int(timeout * 2 + 10)


def enqueue_due(engine, connection: Redis, now_ms: int, timeout: float) -> tuple[list[str], int | None]:
    """A delivery job for each due subscription that has none queued; returns their ids and
    when the next heartbeat or retry falls due."""
    queue = Queue(QUEUE, connection=connection)
    enqueued = []
    due, wake = scan_subscriptions(engine, now_ms)
    for sub_id in due:
        if connection.exists(running_key(sub_id)):
            continue
        if not connection.set(queued_key(sub_id), "1", nx=True, ex=lease_seconds(timeout) + 60):
            continue
        enqueued.append(sub_id)
    for start in range(0, len(enqueued), BATCH):
        queue.enqueue(deliver_job, enqueued[start:start + BATCH], result_ttl=60, failure_ttl=86_400,
                      job_timeout=3600)
    return enqueued, wake


def prune(engine, retention_days: float, now_ms: int) -> int:
    """Events older than the retention are forgotten ($events can no longer replay them) -
    once delivered: a rest-hook subscription's undelivered events are kept whatever their
    age (at least once means at least once). Websocket subscriptions, which have no
    acknowledgement, and deleted ones lose them by age alone."""
    from sqlalchemy import and_, select

    from ..replicate.links import writing
    from .deliver import scan_channels
    cutoff = now_ms - int(retention_days * 86_400_000)
    ev, st = subscription_event, subscription_state
    hooks = scan_channels(engine).get("rest-hook", [])
    condition = ev.c.occurred_ms < cutoff
    if hooks:
        delivered = select(st.c.delivered).where(st.c.sub_id == ev.c.sub_id).scalar_subquery()
        condition = and_(condition, ~and_(ev.c.sub_id.in_(hooks), ev.c.number > delivered))
    with writing(engine) as conn:
        return conn.execute(delete(ev).where(condition)).rowcount


class Dispatcher:
    """Matcher and scheduler of deliveries, in a daemon thread of the worker."""

    def __init__(self, config: dict, connection: Redis, clock=time.time):
        self.config, self.connection, self.clock = config, connection, clock
        self.rules = subscription_rules(config)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="subscription-dispatcher", daemon=True)
        self.last_prune = 0.0
        self.last_scan = 0.0
        self.next_wake_ms: int | None = None
        self.identity = f"{socket.gethostname()}:{os.getpid()}:{id(self)}"

    def start(self) -> "Dispatcher":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        while not self.stopped.is_set():
            if self.leading():
                self.run_once()
                self.stopped.wait(self.rules.settings.poll_interval)
            else:
                self.stopped.wait(LEADER_SECONDS / 3)

    def leading(self) -> bool:
        """One dispatcher at a time polls (the others stand by and take over within seconds of
        its worker's death); correctness never depends on it: the matcher's row lock and the
        delivery locks are what keep work single."""
        try:
            if self.connection.set(LEADER_KEY, self.identity, nx=True, ex=LEADER_SECONDS):
                return True
            if self.connection.get(LEADER_KEY) == self.identity.encode():
                self.connection.expire(LEADER_KEY, LEADER_SECONDS)
                return True
            return False
        except (RedisError, OSError):
            return True  # without Redis there is nothing to enqueue to, but matching goes on

    def run_once(self) -> list[str]:
        try:
            engine = process_engine(self.config)
            now_ms = int(self.clock() * 1000)
            matched = match_all(engine, now_ms)
            if self.clock() - self.last_prune > PRUNE_EVERY:
                self.last_prune = self.clock()
                prune(engine, self.rules.settings.retention_days, now_ms)
            # Subscriptions are looked at when changes were just matched (new events, a new or
            # changed subscription), when a heartbeat or a retry falls due, and once a second.
            if matched.changes or self.clock() - self.last_scan >= SCAN_EVERY or \
                    (self.next_wake_ms is not None and now_ms >= self.next_wake_ms):
                self.last_scan = self.clock()
                enqueued, self.next_wake_ms = enqueue_due(engine, self.connection, now_ms,
                                                          self.rules.settings.timeout)
                return enqueued
            return []
        except (RedisError, OSError) as exc:
            log.warning("subscription dispatcher: Redis or storage unavailable, will retry: %s", exc)
        except Exception:  # noqa: BLE001 - the loop must survive to try again
            log.exception("subscription dispatcher failed; will retry")
        return []


def prepare_worker(config: dict, connection: Redis) -> Dispatcher:
    """Called by the worker process before it starts taking jobs."""
    use_config(config)
    if QUEUE not in config["worker"]["queues"]:
        log.warning("this worker does not take %s jobs: subscriptions are matched here but delivered only by "
                    "workers that do (worker.queues)", QUEUE)
    return Dispatcher(config, Redis.from_url(config["redis_url"])).start()


def own_base(config: dict) -> str:
    from ..auth.cli import default_base
    return default_base(config).rstrip("/")
