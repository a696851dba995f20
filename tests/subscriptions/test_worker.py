"""Subscriptions through real processes: `fhirimg serve` (gunicorn) and `fhirimg worker` on a
private Redis, both killed with SIGKILL during delivery, and Redis flushed. Afterwards the
subscriber has every event number from 1 to the last, first seen in order, and a number seen
twice always names the same change (at least once, never a gap, never a renumbering)."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests
from redis import Redis
from sqlalchemy import func, select

from fhirimg.store.schema import resource_version
from fhirimg.subscriptions.schema import subscription_state

from ..services import database_url_of, fhirimg_env, free_port, start_fhirimg, wait_for_http
from ..transfer.workerproc import WorkerProcess, wait_for, write_config
from .conftest import study, subscription

FHIR = {"Content-Type": "application/fhir+json"}
STUDIES = 400


class Server:
    def __init__(self, workdir, config_path):
        self.workdir, self.config_path, self.port = workdir, config_path, free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.process = None

    def start(self) -> None:
        self.process = start_fhirimg(["serve", "--config", str(self.config_path), "--port", str(self.port),
                                      "--workers", "2"], self.workdir, fhirimg_env(), start_new_session=True)
        wait_for_http(f"{self.base}/metadata", self.process, log=self.workdir / "fhirimg.log")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def writer(server: Server, done: threading.Event, counter: list[int]) -> None:
    """STUDIES studies, singly and in transactions of five; a write cut off by a kill is retried
    (it may have committed too: the events follow what committed, not what was answered)."""
    session = requests.Session()
    while counter[0] < STUDIES:
        n = counter[0]
        try:
            if n % 20 < 10:
                response = session.post(f"{server.base}/ImagingStudy", json=study(f"p{n}"), headers=FHIR, timeout=10)
                step = 1
            else:
                bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
                    {"resource": study(f"p{n + i}"), "request": {"method": "POST", "url": "ImagingStudy"}}
                    for i in range(5)]}
                response = session.post(server.base, json=bundle, headers=FHIR, timeout=10)
                step = 5
        except requests.RequestException:
            time.sleep(0.05)
            continue
        if response.status_code < 300:
            counter[0] += step
    done.set()


@pytest.mark.timeout(600)
def test_kill_server_and_worker_and_flush_redis_during_delivery(tmp_path, database, engine, redis_server, receiver):
    config_path = write_config(tmp_path / "fhirimg.toml", {
        "database_url": database_url_of(database), "redis_url": redis_server.url, "var_dir": str(tmp_path / "var"),
        "log_level": "INFO"}, {
        "auth": {"mode": "none", "allow_anonymous": True},
        "transfer": {"allow_loopback": False, "allowed_hosts": [f"127.0.0.1:{receiver.port}"]},
        "subscriptions": {"poll_interval": 0.05, "first_backoff": 0.05, "max_backoff": 0.5}})
    server = Server(tmp_path, config_path)
    server.start()
    worker = WorkerProcess(config_path, tmp_path / "worker.log")
    workers = [worker]
    try:
        created = requests.post(f"{server.base}/Subscription", json=subscription(receiver.url), headers=FHIR, timeout=10)
        assert created.status_code == 201, created.text
        sub_id = created.json()["id"]
        wait_for(lambda: receiver.of_kind("handshake"), 60, what="handshake")
        receiver.delay = 0.01
        done, counter = threading.Event(), [0]
        thread = threading.Thread(target=writer, args=(server, done, counter), daemon=True)
        thread.start()
        for threshold, act in ((40, "worker"), (100, "server"), (160, "redis"), (220, "worker"), (260, "server")):
            wait_for(lambda: len(receiver.event_numbers()) >= threshold, 120, what=f"{threshold} events delivered")
            if act == "worker":
                worker.kill()
                worker = WorkerProcess(config_path, tmp_path / "worker.log")
                workers.append(worker)
            elif act == "server":
                server.kill()
                server.start()
            else:
                Redis.from_url(redis_server.url).flushall()
        assert done.wait(300), "the writes did not finish"
        receiver.delay = 0.0

        def expected() -> int:
            with engine.connect() as conn:
                started = conn.execute(select(subscription_state.c.started_seq)
                                       .where(subscription_state.c.sub_id == sub_id)).scalar()
                return conn.execute(select(func.count()).select_from(resource_version).where(
                    resource_version.c.res_type == "ImagingStudy", resource_version.c.seq > started)).scalar()

        total = expected()
        assert total >= STUDIES
        wait_for(lambda: set(receiver.event_numbers()) >= set(range(1, total + 1)), 180, what="every event")
        numbers = receiver.event_numbers()
        assert set(numbers) == set(range(1, total + 1))
        first_seen = list(dict.fromkeys(numbers))
        assert first_seen == sorted(first_seen)  # in order
        focus_of: dict[int, set] = {}
        for body in receiver.of_kind("event-notification"):
            for event in body["entry"][0]["resource"]["notificationEvent"]:
                focus_of.setdefault(int(event["eventNumber"]), set()).add(event["focus"]["reference"])
        assert all(len(refs) == 1 for refs in focus_of.values())  # a repeat is the same event
        assert len({ref for refs in focus_of.values() for ref in refs}) == total
    finally:
        for w in workers:
            w.stop()
        if server.process and server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGTERM)
            server.process.wait(10)


@pytest.mark.timeout(120)
def test_heartbeats_through_the_worker_keep_their_period(tmp_path, database, subs_client, redis_server, receiver):
    """The dispatcher wakes for the next heartbeat, and a beat counts from when it was due:
    through a real worker, heartbeats every 2 s arrive 2 s apart (+-10%)."""
    config_path = write_config(tmp_path / "fhirimg.toml", {
        "database_url": database_url_of(database), "redis_url": redis_server.url, "var_dir": str(tmp_path / "var"),
        "log_level": "INFO"}, {
        "transfer": {"allow_loopback": False, "allowed_hosts": [f"127.0.0.1:{receiver.port}"]},
        "subscriptions": {"min_heartbeat": 1}})
    worker = WorkerProcess(config_path, tmp_path / "worker.log")
    try:
        sub = subs_client.post("/fhir/Subscription", json=subscription(receiver.url, heartbeatPeriod=2))
        assert sub.status_code == 201
        wait_for(lambda: len(receiver.of_kind("heartbeat")) >= 5, 60, what="five heartbeats")
        with receiver.lock:
            beats = [t for t, b in zip(receiver.times, receiver.received)
                     if b["entry"][0]["resource"]["type"] == "heartbeat"]
        gaps = [b - a for a, b in zip(beats, beats[1:])]
        assert all(1.8 <= gap <= 2.2 for gap in gaps), gaps
    finally:
        worker.stop()
