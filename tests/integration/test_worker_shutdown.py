"""A worker stops within seconds of SIGTERM: rq 3.0 with redis-py 8.2 could take a minute
(the pubsub thread's stop() joined a thread waiting 60 s for a subscription), and a CI test
that allows 20 s failed twice on it."""
from __future__ import annotations

import threading
import time

from redis import Redis
from rq import Queue

from fhirimg.worker import FhirimgSimpleWorker, FhirimgWorker


def test_unsubscribing_at_shutdown_does_not_wait_for_the_pubsub_thread(redis_server):
    connection = Redis.from_url(redis_server.url)
    for kind in (FhirimgWorker, FhirimgSimpleWorker):
        worker = kind([Queue("shutdown-test", connection=connection)], connection=connection)
        worker.subscribe()
        # The race rq's shutdown can lose: the subscription is gone, and the pubsub thread is
        # back in get_message, waiting (60 s) for a subscription that will not come.
        worker.pubsub.unsubscribe()
        deadline = time.monotonic() + 5
        while worker.pubsub.subscribed and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not worker.pubsub.subscribed
        time.sleep(0.3)
        started = time.monotonic()
        done = threading.Thread(target=worker.unsubscribe, daemon=True)
        done.start()
        done.join(10)
        assert not done.is_alive(), f"{kind.__name__}.unsubscribe still waiting after 10 s"
        assert time.monotonic() - started < 3
