"""A subscriber endpoint on a free loopback port, and an app whose allow-list names it."""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import fhirimg.transfer.settings  # noqa: F401 - registers [transfer]
from fhirimg.app import create_app
from fhirimg.config import load_config

from ..auth_support import authorized


class Receiver:
    """Records every POST (body, headers); answers `status` (or 503 while `down`)."""

    def __init__(self):
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.times: list[float] = []  # arrival of each received notification (monotonic)
        self.status = 200
        self.retry_after: str | None = None
        self.down = False
        self.delay = 0.0  # seconds each acknowledged POST takes (a backlog for crash tests)
        self.lock = threading.Lock()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.server = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.down:
                    self.send_response(503)
                    if receiver.retry_after:
                        self.send_header("Retry-After", receiver.retry_after)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.received.append(json.loads(body))
                    receiver.times.append(time.monotonic())
                    receiver.headers.append(dict(self.headers))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def of_kind(self, kind: str) -> list[dict]:
        return [b for b in self.received if b["entry"][0]["resource"]["type"] == kind]

    def event_numbers(self) -> list[int]:
        return [int(e["eventNumber"]) for b in self.of_kind("event-notification")
                for e in b["entry"][0]["resource"].get("notificationEvent", [])]


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.stop()


@pytest.fixture
def subs_config(database, receiver):
    url, _ = database
    return load_config(env={}, read_files=False, overrides={
        "database_url": url, "limits": {"max_body_bytes": 2 * 1024 * 1024},
        "transfer": {"allow_loopback": False, "allowed_hosts": [f"127.0.0.1:{receiver.port}"]},
        "subscriptions": {"first_backoff": 0.05, "max_backoff": 0.2, "max_error_seconds": 1.0, "min_heartbeat": 1}})


@pytest.fixture
def subs_app(subs_config, engine):
    return create_app(subs_config, engine=engine)


@pytest.fixture
def subs_client(subs_app):
    return authorized(subs_app)


CHANNEL = {"system": "http://terminology.hl7.org/CodeSystem/subscription-channel-type", "code": "rest-hook"}
TOPIC_BASE = "http://fhirimg.org/fhir/SubscriptionTopic"


def subscription(endpoint: str, topic: str = "imagingstudy-changed", **extra) -> dict:
    return {"resourceType": "Subscription", "status": "requested", "topic": f"{TOPIC_BASE}/{topic}",
            "channelType": CHANNEL, "endpoint": endpoint, "content": "id-only", **extra}


def study(patient: str, modality: str = "CT", **extra) -> dict:
    return {"resourceType": "ImagingStudy", "status": "available", "subject": {"reference": f"Patient/{patient}"},
            "series": [{"uid": "1.2.3", "modality": {"coding": [
                {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality}]}}], **extra}


class Driver:
    """The worker's two halves run in the test's thread: the matcher, then a delivery of one
    subscription (what the dispatcher and one RQ job do), as often as asked."""

    def __init__(self, engine, config):
        import time

        from fhirimg.store import Repository
        from fhirimg.subscriptions.deliver import Deliverer
        from fhirimg.subscriptions.rules import subscription_rules
        self.engine, self.time = engine, time
        rules = subscription_rules(config)
        self.deliverer = Deliverer(Repository(engine, role="fhirimg-subscriptions"), rules.settings, rules.policy,
                                   "http://fhirimg.test/fhir")

    def match(self):
        from fhirimg.subscriptions.matcher import match_all
        return match_all(self.engine, int(self.time.time() * 1000))

    def run(self, sub_id: str):
        self.match()
        return self.deliverer.deliver(sub_id)

    def until(self, sub_id: str, predicate, timeout: float = 30.0, pause: float = 0.02):
        deadline = self.time.monotonic() + timeout
        while self.time.monotonic() < deadline:
            self.run(sub_id)
            if predicate():
                return
            self.time.sleep(pause)
        raise AssertionError("condition not reached in time")


@pytest.fixture
def driver(engine, subs_config, subs_app):
    d = Driver(engine, subs_config)
    d.match()  # the matcher's place is taken before the test's subscriptions are written
    yield d
    d.deliverer.close()
