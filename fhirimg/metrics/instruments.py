"""The metrics a process writes as things happen: requests, its database pool, and the
transfer step durations folded in at scrape time.

Each app gets its own objects, registered nowhere (``registry=None``): a test may build
many apps in one process, and a gunicorn worker builds its app after the fork. Under
gunicorn (PROMETHEUS_MULTIPROC_DIR set) their values live in per-process files that
/metrics adds up; otherwise the scrape registry of the app collects them directly.
"""
from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

# From a cached read (~2 ms) to a large transaction Bundle or a slow search (tens of s).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# A transfer step takes from well under a second (QIDO of a small study) to hours.
STEP_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0)


@dataclass
class Instruments:
    requests: Counter
    latency: Histogram
    pool_in_use: Gauge
    pool_size: Gauge
    step_durations: Histogram

    def collectors(self) -> list:
        return [self.requests, self.latency, self.pool_in_use, self.pool_size, self.step_durations]


def make_instruments() -> Instruments:
    return Instruments(
        requests=Counter("fhirimg_http_requests", "HTTP requests answered, by method, route template and status.",
                         ["method", "route", "status"], registry=None),
        latency=Histogram("fhirimg_http_request_duration_seconds",
                          "Time from receiving a request to its response headers, by method and route template.",
                          ["method", "route"], buckets=LATENCY_BUCKETS, registry=None),
        # liveall: one series per living worker process (its pid label); a dead worker's go.
        pool_in_use=Gauge("fhirimg_db_pool_connections_in_use",
                          "Database connections checked out of this process's pool.",
                          registry=None, multiprocess_mode="liveall"),
        pool_size=Gauge("fhirimg_db_pool_size",
                        "Connections this process's pool keeps open (db_pool_size); up to twice as many "
                        "more are opened under load.", registry=None, multiprocess_mode="liveall"),
        step_durations=Histogram("fhirimg_transfer_step_duration_seconds",
                                 "Duration of each step of the retrieve Tasks that ended since the server "
                                 "started (from Task.output), by step and Task status.",
                                 ["step", "status"], buckets=STEP_BUCKETS, registry=None),
    )
