"""Never lost: 2 000 mixed writes against a real server killed with SIGKILL 20 times at random
moments. Afterwards every stored version has exactly one write AuditEvent, every write
AuditEvent names a stored version, and the chain verifies (issue 14)."""
from __future__ import annotations

import os
import random
import re
import signal
import threading
import time
from collections import Counter

import pytest
import requests
from sqlalchemy import text

from fhirimg.audit.chain import verify_chain

from ..factories import make_imaging_study, make_patient
from ..services import database_url_of, fhirimg_env, free_port, start_fhirimg, wait_for_http
from .trail import all_events, code_of, whats

WRITES, KILLS, CLIENTS = 2000, 20, 4
VERSION = re.compile(r"^(\w+)/([^/]+)/_history/(\d+)$")
FHIR = {"Content-Type": "application/fhir+json"}


class KilledServer:
    """`fhirimg serve` (gunicorn, 2 workers) in its own process group, killed whole with SIGKILL."""

    def __init__(self, workdir, database_url: str):
        self.workdir, self.port = workdir, free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.env = fhirimg_env(True, database_url=database_url, var_dir=workdir / "var", log_level="WARNING")
        self.process = None

    def start(self) -> None:
        self.process = start_fhirimg(["serve", "--port", str(self.port), "--workers", "2"], self.workdir,
                                     self.env, start_new_session=True)
        wait_for_http(f"{self.base}/metadata", self.process, log=self.workdir / "fhirimg.log")

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def one_write(session: requests.Session, base: str, rng: random.Random, mine: list[tuple[str, str]]) -> None:
    """A create, update, patch, delete or transaction; connection errors are the point of the test."""
    kind = rng.choice(["patient", "study", "update", "patch", "delete", "transaction"])
    if kind in ("update", "patch", "delete") and mine:
        res_type, res_id = rng.choice(mine)
        if kind == "delete":
            session.delete(f"{base}/{res_type}/{res_id}", timeout=10)
        elif kind == "patch" and res_type == "Patient":
            session.patch(f"{base}/Patient/{res_id}", json=[{"op": "replace", "path": "/birthDate",
                                                              "value": f"19{rng.randint(10, 99)}-01-01"}],
                          headers={"Content-Type": "application/json-patch+json"}, timeout=10)
        elif res_type == "Patient":
            body = {**make_patient(f"MRN-{res_id}"), "id": res_id, "birthDate": f"19{rng.randint(10, 99)}-02-02"}
            session.put(f"{base}/Patient/{res_id}", json=body, headers=FHIR, timeout=10)
        return
    if kind == "transaction":
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:3f1c8a9e-0000-4000-8000-000000000009", "resource": make_patient(),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": make_imaging_study("urn:uuid:3f1c8a9e-0000-4000-8000-000000000009"),
             "request": {"method": "POST", "url": "ImagingStudy"}}]}
        session.post(base, json=bundle, headers=FHIR, timeout=10)
        return
    owner = rng.choice([i for t, i in mine if t == "Patient"] or ["none"])
    body = make_patient() if kind == "patient" else make_imaging_study(f"Patient/{owner}")
    response = session.post(f"{base}/{body['resourceType']}", json=body, headers=FHIR, timeout=10)
    if response.status_code == 201:
        mine.append((body["resourceType"], response.json()["id"]))


def write_loop(server: KilledServer, seed: int, quota: list[int], lock: threading.Lock) -> None:
    """Writes until 2 000 have been answered; one cut off by a kill does not count."""
    rng, mine, session = random.Random(seed), [], requests.Session()
    while quota[0] > 0:
        try:
            one_write(session, server.base, rng, mine)
        except requests.RequestException:
            time.sleep(0.05)  # the server is down: the next write waits for it
            continue
        with lock:
            quota[0] -= 1


@pytest.mark.timeout(600)
def test_every_stored_version_has_exactly_one_write_event_after_20_kills(tmp_path, database, engine):
    server = KilledServer(tmp_path, database_url_of(database))
    server.start()
    quota, lock = [WRITES], threading.Lock()
    writers = [threading.Thread(target=write_loop, args=(server, seed, quota, lock)) for seed in range(CLIENTS)]
    for writer in writers:
        writer.start()
    rng = random.Random(99)
    try:
        # 20 random moments spread over the 2 000 writes: after the n-th write has started,
        # and a few milliseconds more, mid-request most of the time.
        for threshold in sorted(rng.sample(range(50, WRITES - 50), KILLS)):
            while WRITES - quota[0] < threshold:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.03))
            server.kill()
            server.start()
    finally:
        for writer in writers:
            writer.join(300)
        server.kill()
    with engine.connect() as conn:
        versions = {(t, i, v) for t, i, v in conn.execute(text(
            "SELECT res_type, res_id, version FROM resource_version"))}
        verdict = verify_chain(conn)
    writes = Counter()
    for event in all_events(engine):
        if code_of(event) in ("create", "update", "patch", "delete"):
            for what in whats(event):
                match = VERSION.match(what)
                if match:
                    writes[(match[1], match[2], int(match[3]))] += 1
    # Enough writes went through between the kills: about half of the answered ones make a
    # version (a repeated delete or a patch of a deleted resource makes none; measured 992-1 067
    # of 2 000, no 5xx), so "more than half" failed now and then on a loaded machine.
    assert len(versions) > WRITES // 4
    assert {v for v, n in writes.items() if n != 1} == set()  # no version recorded twice
    assert set(writes) == versions  # every version has its event, every event its version
    assert verdict.ok, verdict.describe()
