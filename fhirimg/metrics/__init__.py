"""Metrics and health (issue 16): /metrics in Prometheus text format, /healthz and /readyz.

Importing the package registers the ``[metrics]`` configuration section and nothing more:
prometheus_client is imported by ``register_metrics`` (when an app is built), after
``fhirimg.metrics.multiprocess.gunicorn_options`` has set up multiprocess mode in the
gunicorn master. README.rst, "Metrics and health", lists what is exposed.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import settings as _settings  # noqa: F401  (registers the [metrics] section)

if TYPE_CHECKING:
    from flask import Flask


def register_metrics(app: Flask) -> None:
    """Count requests, watch the pool, and serve the three endpoints. Call it before the
    API's authentication is registered: the endpoints authenticate on their own terms."""
    from .pool import watch_pool
    from .probes import register_probes
    from .scrape import build_state
    from .traffic import register_traffic
    state = build_state(app)
    register_traffic(app, state.instruments)
    watch_pool(app.extensions["fhirimg.engine"], state.instruments)
    register_probes(app, state)
