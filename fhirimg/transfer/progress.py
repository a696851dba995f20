"""Live progress of a running transfer, for the console's bars and throughput chart.

Telemetry, not data: the Task in the database stays the record (its outputs hold every
figure once the run ends); this says where each step is and how many bytes have arrived
while it runs. A sampler thread takes a snapshot every second and hands it to `publish`;
the worker publishes to Redis with an expiry (`redis_publisher`), so nothing outlives the
hour after a run and nothing is written to the database per second.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Callable

log = logging.getLogger("fhirimg.transfer")
KEY = "fhirimg:transfer-progress:{task_id}"
TTL_SECONDS = 3600
MAX_SAMPLES = 900  # 15 min at one a second; longer runs keep the latest
EVERY = 1.0


class ProgressSampler:
    """Snapshots of `spans` (step -> Span), `received()` and `stored()` every `every` s."""

    def __init__(self, publish: Callable[[dict], None], spans: dict, received: Callable[[], int],
                 stored: Callable[[], int], monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, every: float = EVERY):
        self.publish, self.spans, self.received, self.stored = publish, spans, received, stored
        self.monotonic, self.wall, self.every = monotonic, wall, every
        self.samples: list[list[int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="progress", daemon=True)

    def __enter__(self) -> "ProgressSampler":
        self.send()  # the first word: the run began (a chart needs a start to measure from)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.send()  # the last word: every step ended

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.send()

    def send(self) -> None:
        try:
            self.publish(self.snapshot())
        except Exception as exc:  # telemetry must never fail a transfer
            log.debug("transfer progress not published: %s", exc)

    def snapshot(self) -> dict:
        offset = self.wall() - self.monotonic()  # monotonic instants as wall-clock milliseconds
        now_ms = int((self.monotonic() + offset) * 1000)
        received, stored = self.received(), self.stored()
        self.samples.append([now_ms, received, stored])
        del self.samples[:-MAX_SAMPLES]
        steps = {}
        for step, span in self.spans.items():
            if span.first is None:
                continue
            running = span.active > 0 or span.last is None
            steps[step] = {"started_ms": int((span.first + offset) * 1000),
                           "ended_ms": None if running else int((span.last + offset) * 1000)}
        return {"now_ms": now_ms, "steps": steps, "bytes": received, "instances": stored,
                "samples": list(self.samples)}


def redis_publisher(connection, task_id: str) -> Callable[[dict], None]:
    key = KEY.format(task_id=task_id)

    def publish(snapshot: dict) -> None:
        connection.set(key, json.dumps(snapshot, separators=(",", ":")), ex=TTL_SECONDS)
    return publish


def read_progress(connection, task_id: str) -> dict | None:
    raw = connection.get(KEY.format(task_id=task_id))
    return json.loads(raw) if raw else None
