"""One app's metrics: what it records, what it reads at scrape time, and the answer to /metrics."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .gauges import AppGauges, queue_names
from .instruments import Instruments, make_instruments
from .multiprocess import ProcessFiles, multiprocess_directory
from .readiness import Readiness, check_blob_store, check_database, check_redis, check_schema
from .settings import MetricsSettings, metrics_settings
from .steps import FileCursor, MemoryCursor, StepDurations, latest_seq

log = logging.getLogger("fhirimg.metrics")


@dataclass
class MetricsState:
    settings: MetricsSettings
    instruments: Instruments
    gauges: AppGauges
    steps: StepDurations
    readiness: Readiness
    registry: CollectorRegistry
    redis_url: str = ""
    _redis: object = field(default=None, repr=False)

    def redis(self):
        """A client with short timeouts for scrapes and /readyz, made at first use; None
        without a redis_url."""
        if not self.redis_url:
            return None
        if self._redis is None:
            from redis import Redis
            timeout = self.settings.readiness_timeout
            self._redis = Redis.from_url(self.redis_url, socket_connect_timeout=timeout, socket_timeout=timeout)
        return self._redis


def build_state(app: Flask) -> MetricsState:
    from ..transfer.settings import blob_root
    config, engine = app.config["FHIRIMG"], app.extensions["fhirimg.engine"]
    settings = metrics_settings(config)
    if settings.token_env and not settings.token:
        log.warning("metrics: [metrics] token_env names %s, which is empty: /metrics and /readyz are refused "
                    "on the API's port", settings.token_env)
    instruments = make_instruments()
    directory = multiprocess_directory()
    cursor = FileCursor(directory) if directory else MemoryCursor()
    cursor.start_at(latest_seq(engine))  # step durations: the runs that end from now on
    registry = CollectorRegistry()
    state = MetricsState(settings, instruments, gauges=None, steps=StepDurations(engine, instruments.step_durations,
                                                                                  cursor),
                         readiness=None, registry=registry, redis_url=config["redis_url"])
    state.gauges = AppGauges(engine, state.redis, queue_names(config), blob_root(config), settings.cache_seconds,
                             directory)
    state.readiness = make_readiness(state, engine, blob_root(config))
    for collector in ([ProcessFiles(directory)] if directory else instruments.collectors()):
        registry.register(collector)
    registry.register(state.gauges)
    return state


def make_readiness(state: MetricsState, engine, root: str) -> Readiness:
    checks = {"database": lambda: check_database(engine), "schema": lambda: check_schema(engine),
              "blob_store": lambda: check_blob_store(root)}
    skipped = {}
    if state.redis_url:
        checks["redis"] = lambda: check_redis(state.redis)
    else:
        skipped["redis"] = "no redis_url is configured"
    return Readiness(checks, state.settings.readiness_timeout, skipped)


def render(state: MetricsState, accept: str | None) -> tuple[bytes, str]:
    """The exposition in the format the scraper asked for (Prometheus text by default)."""
    try:
        state.steps.fold()
    except Exception as exc:  # noqa: BLE001 - the database being down shows in source_up
        log.debug("metrics: step durations not folded: %s", exc)
    encoder, content_type = choose_encoder(accept)
    return encoder(state.registry), content_type
