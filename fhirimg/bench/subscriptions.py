"""`fhirimg bench subscriptions`: commit-to-delivery latency of rest-hook notifications.

A private stack (SQLite or a PostgreSQL schema of its own, a private Redis, `fhirimg serve`,
`fhirimg worker`s as `make run` starts them) and a subscriber endpoint in this process. First the write load alone
(ImagingStudy creates at --rate per second for --seconds), the baseline; then --subscriptions
rest-hook subscriptions, one per patient, and the same load, each write matching exactly one
subscription. Printed: write latency in both phases and their ratio (what subscriptions cost
a writer), and for every event the time from its commit (the version's meta.lastUpdated,
stamped at commit) to its arrival at the subscriber, p50/p99/max, with the count delivered,
missing and repeated.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click

from .servers import BenchClient, TwoServers, free_port, http_session, start_serve, stop, use_token_source
from .stats import Latencies

TOPIC = "http://fhirimg.org/fhir/SubscriptionTopic/imagingstudy-changed"
CHANNEL = {"system": "http://terminology.hl7.org/CodeSystem/subscription-channel-type", "code": "rest-hook"}


class Subscriber:
    """The subscriber's endpoint, in a process of its own (receiving must not share the
    writers' interpreter lock: their latency is what is measured). It appends one line per
    notification (arrival time, type, subscription, events) to a file read at the end."""

    def __init__(self, workdir: Path):
        import multiprocessing
        self.path = workdir / "arrivals.jsonl"
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/hook"
        self.process = multiprocessing.get_context("fork").Process(target=receive, args=(port, str(self.path)),
                                                                   daemon=True)
        self.process.start()

    def read(self):
        """(arrivals {(sub, number): first arrival}, focus {(sub, number): reference}, repeats, handshakes)."""
        arrivals, focus, repeats, handshakes = {}, {}, 0, set()
        if not self.path.exists():
            return arrivals, focus, repeats, handshakes
        for line in self.path.read_text().splitlines():
            try:
                when, kind, sub, events = json.loads(line)
            except ValueError:
                continue  # a line being written
            if kind == "handshake":
                handshakes.add(sub)
            for number, ref in events:
                if (sub, number) in arrivals:
                    repeats += 1
                else:
                    arrivals[(sub, number)], focus[(sub, number)] = when, ref
        return arrivals, focus, repeats, handshakes

    def close(self) -> None:
        self.process.terminate()
        self.process.join(10)


def receive(port: int, path: str) -> None:
    out = open(path, "a", buffering=1)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802
            now = time.time()
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            status = body["entry"][0]["resource"]
            events = [(int(e["eventNumber"]), (e.get("focus") or {}).get("reference", ""))
                      for e in status.get("notificationEvent", [])]
            with lock:
                out.write(json.dumps([now, status["type"], status["subscription"]["reference"].split("/", 1)[1],
                                      events]) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.serve_forever()


def instant_seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def write_load(base: str, patients: list[str], rate: float, seconds: float) -> tuple[Latencies, dict[str, float]]:
    """ImagingStudy creates at `rate` per second from 4 threads; returns write latencies and,
    per version written (ImagingStudy/id/_history/1), its commit time."""
    latencies, committed, lock = Latencies("create"), {}, threading.Lock()
    total = int(rate * seconds)
    start = time.monotonic()
    counter = [0]

    def writer(seed: int):
        rng, session = random.Random(seed), http_session()
        while True:
            with lock:
                n = counter[0]
                counter[0] += 1
            if n >= total:
                return
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body = {"resourceType": "ImagingStudy", "status": "available",
                    "subject": {"reference": f"Patient/{rng.choice(patients)}"}}
            began = time.monotonic()
            try:
                response = session.post(f"{base}/ImagingStudy", json=body, timeout=30,
                                        headers={"Content-Type": "application/fhir+json"})
            except Exception:  # noqa: BLE001 - counted, the load goes on
                latencies.errors += 1
                continue
            if response.status_code != 201:
                latencies.errors += 1
                continue
            latencies.seconds.append(time.monotonic() - began)
            made = response.json()
            with lock:
                committed[f"ImagingStudy/{made['id']}/_history/1"] = instant_seconds(made["meta"]["lastUpdated"])

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, committed


def start_worker(env: dict, workdir: Path, notify_only: bool = False) -> subprocess.Popen:
    """A `fhirimg worker`; `notify_only`: one for fhirimg-notify alone, without forks (as `make run`)."""
    log = open(workdir / "worker.log", "ab")
    if notify_only:
        env = {**env, "FHIRIMG_WORKER__QUEUES": "fhirimg-notify", "FHIRIMG_WORKER__FORK": "false"}
    else:
        env = {**env, "FHIRIMG_WORKER__QUEUES": "fhirimg-urgent,fhirimg"}
    return subprocess.Popen([sys.executable, "-m", "fhirimg.cli", "worker"], env=env, cwd=workdir, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def run(subscriptions: int, rate: float, seconds: float, database: str | None, workers: int) -> dict:
    from ..embedded import start_redis
    work = Path(tempfile.mkdtemp(prefix="fhirimg-bench-subs-"))
    pair = TwoServers(database_url=database)
    pair.dir = work
    database_url = pair.private_database()
    (work / "redis").mkdir()
    redis_proc, redis_url = start_redis(work / "redis")
    subscriber = Subscriber(work)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
    env.update({"FHIRIMG_DATABASE_URL": database_url, "FHIRIMG_VAR_DIR": str(work), "FHIRIMG_LOG_LEVEL": "WARNING",
                "FHIRIMG_REDIS_URL": redis_url, "FHIRIMG_TRANSFER__ALLOW_LOOPBACK": "true"})
    processes: list[subprocess.Popen] = []
    try:
        server, base = start_serve(env, work, workers=2)
        processes.append(server)
        client = BenchClient(database_url, work, base)
        use_token_source(client.token)
        processes += [start_worker(env, work, notify_only=i > 0) for i in range(max(workers, 2))]
        patients = [f"bench-{i}" for i in range(subscriptions)]
        baseline, _ = write_load(base, patients, rate, seconds)
        session = http_session()
        for patient in patients:
            response = session.post(f"{base}/Subscription", json={
                "resourceType": "Subscription", "status": "requested", "topic": TOPIC, "channelType": CHANNEL,
                "endpoint": subscriber.url, "content": "id-only",
                "filterBy": [{"filterParameter": "patient", "value": f"Patient/{patient}"}]}, timeout=30)
            response.raise_for_status()
        deadline = time.monotonic() + 120
        while len(subscriber.read()[3]) < subscriptions and time.monotonic() < deadline:
            time.sleep(0.2)
        loaded, committed = write_load(base, patients, rate, seconds)
        deadline = time.monotonic() + 120
        while len(subscriber.read()[0]) < len(committed) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # late repeats, if any
        arrivals, focus, repeats, handshakes = subscriber.read()
        by_focus = {ref.rsplit("/_history/", 1)[0] + "/_history/1" if ref else ref: key for key, ref in focus.items()}
        delivery = Latencies("delivery")
        for ref, commit in committed.items():
            key = by_focus.get(ref)
            if key is not None:
                delivery.seconds.append(arrivals[key] - commit)
        return {"subscriptions": subscriptions, "rate": rate, "seconds": seconds, "workers": workers,
                "database": "postgresql" if database_url.startswith("postgresql") else "sqlite",
                "handshakes": len(handshakes), "baseline": baseline, "loaded": loaded,
                "delivery": delivery, "events": len(committed), "delivered": len(delivery.seconds),
                "repeats": repeats}
    finally:
        subscriber.close()
        for process in processes:
            stop(process)
        redis_proc.terminate()
        if pair.schema is not None:
            pair.processes = []
            pair.__exit__(None, None, None)
        if not os.environ.get("FHIRIMG_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def report(result: dict) -> str:
    b, w, d = result["baseline"], result["loaded"], result["delivery"]

    def ms(lat, p):
        return lat.percentile(p) * 1000

    ratio = ms(w, 50) / ms(b, 50) if b.seconds and w.seconds else float("nan")
    return "\n".join([
        f"bench subscriptions: {result['subscriptions']} rest-hook subscriptions (one per patient), "
        f"{result['rate']:.0f} writes/s for {result['seconds']:.0f} s, {result['workers']} worker(s), "
        f"{result['database']}",
        f"{'':<28}{'count':>7}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}",
        *(f"{name:<28}{len(lat.seconds):>7}{lat.errors:>8}{ms(lat, 50):>9.1f}{ms(lat, 99):>9.1f}"
          f"{(max(lat.seconds) * 1000 if lat.seconds else float('nan')):>9.1f}"
          for name, lat in (("write, no subscriptions", b), ("write, with subscriptions", w),
                            ("commit -> delivery", d))),
        f"write p50 with/without subscriptions: {ratio:.2f}",
        f"events {result['events']}, delivered {result['delivered']}, missing "
        f"{result['events'] - result['delivered']}, repeated {result['repeats']}; handshakes "
        f"{result['handshakes']}/{result['subscriptions']}",
    ])


@click.command("subscriptions")
@click.option("--subscriptions", "count", default=100, show_default=True, help="Subscriptions (one per patient).")
@click.option("--rate", default=50.0, show_default=True, help="Writes per second.")
@click.option("--seconds", default=30.0, show_default=True, help="Length of each phase.")
@click.option("--workers", default=2, show_default=True,
              help="`fhirimg worker` processes (at least 2): one for retrievals, the others for "
                   "fhirimg-notify alone, without forks (as `make run`).")
@click.option("--database", default=None, help="A PostgreSQL URL (a private schema is made); default SQLite.")
def command(count: int, rate: float, seconds: float, workers: int, database: str | None) -> None:
    """Commit-to-delivery latency of rest-hook notifications under a write load."""
    click.echo(report(run(count, rate, seconds, database, workers)))
