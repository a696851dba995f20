"""The RQ worker process: listens to the configured queues, urgent work first."""
from __future__ import annotations

from redis import Redis
from rq import Queue, SimpleWorker, Worker


def connect_redis(url: str) -> Redis:
    return Redis.from_url(url)


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
    worker_class = Worker if config["worker"]["fork"] else SimpleWorker
    worker_class(queues, connection=connection).work(burst=burst, with_scheduler=True)
