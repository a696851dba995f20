"""The RQ worker process: listens to the configured queues, urgent work first."""
from __future__ import annotations

from redis import Redis
from rq import Queue, SimpleWorker, Worker


def connect_redis(url: str) -> Redis:
    return Redis.from_url(url)


class PromptShutdown:
    """A worker that stops within a second of SIGTERM.

    At shutdown rq (3.0) unsubscribes from its command channel, then stops the pubsub thread.
    redis-py 8.2's stop() joins that thread with no timeout, and the thread may by then be
    waiting up to rq's 60 s for a subscription that will not come back. So a stop took up to
    a minute: a test that allows 20 s failed in CI twice, and under load the hang reproduced
    on the first try (py-spy: the main thread in PubSubWorkerThread.stop -> join, the pubsub
    thread in PubSub.get_message -> subscribed_event.wait). The thread is a daemon: it is
    given a second and otherwise left to end with the process, and its connection is closed
    only once it has stopped reading it."""

    def unsubscribe(self):
        thread = getattr(self, "pubsub_thread", None)
        if not thread:
            return
        self.log.info("Worker %s: unsubscribing from channel %s", self.name, self.pubsub_channel_name)
        try:
            self.pubsub.unsubscribe()
        except Exception as exc:  # noqa: BLE001 - shutting down: a broken connection is no reason to hang
            self.log.debug("unsubscribe at shutdown: %s", exc)
        try:
            thread.stop(timeout=1)
        except TypeError:  # redis-py before 8.2: stop() only clears the flag
            thread.stop()
            thread.join(timeout=1)
        if not thread.is_alive():
            self.pubsub.close()


class FhirimgWorker(PromptShutdown, Worker):
    """rq's forking worker, stopping promptly."""


class FhirimgSimpleWorker(PromptShutdown, SimpleWorker):
    """rq's in-process worker, stopping promptly."""


def run_worker(config: dict, burst: bool = False) -> None:
    from .store import create_schema, make_engine
    engine = make_engine(config["database_url"])  # refuse at once on a schema older or newer than known
    create_schema(engine)
    engine.dispose()
    connection = connect_redis(config["redis_url"])
    queues = [Queue(name, connection=connection) for name in config["worker"]["queues"]]
    from .transfer.jobs import prepare_worker  # transfer: job config + reconciler (start-up, periodic)
    prepare_worker(config, connection)
    from .replicate.jobs import prepare_worker as prepare_replication  # scheduled replication links
    prepare_replication(config, connection)
    from .audit.forward import prepare_forwarding  # audit trail: copies to external audit repositories
    prepare_forwarding(config)
    from .subscriptions.jobs import prepare_worker as prepare_subscriptions  # matcher + delivery scheduling
    prepare_subscriptions(config, connection)
    worker_class = FhirimgWorker if config["worker"]["fork"] else FhirimgSimpleWorker
    worker_class(queues, connection=connection).work(burst=burst, with_scheduler=True)
