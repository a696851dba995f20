"""Concurrent writes over real sockets: the loser of a race gets 409 or 412, never a 500,
and no write is lost (http.html#concurrency). SQLite is a file database (WAL), as in
production; PostgreSQL a private schema."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from werkzeug.serving import make_server

from fhirimg.config import load_config

from ..auth_support import ANONYMOUS
from ..factories import make_patient

FHIR = {"Content-Type": "application/fhir+json"}
CLIENTS = 8


@pytest.fixture
def config(database):
    """Races over plain sockets, anonymous: access control is tests/auth's subject."""
    return load_config(env={}, read_files=False, overrides={"database_url": database[0], "auth": ANONYMOUS})


@pytest.fixture
def base(app):
    """The app served by a threaded WSGI server on a free loopback port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/fhir"
    server.shutdown()
    thread.join(5)


def all_at_once(count: int, action) -> list[requests.Response]:
    """Run `action(i)` in `count` threads released together by a barrier."""
    barrier = threading.Barrier(count)

    def run(i):
        with requests.Session() as session:
            barrier.wait(5)
            return action(session, i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_updates_with_the_same_if_match_have_exactly_one_winner(base):
    patient = requests.post(f"{base}/Patient", json=make_patient(), headers=FHIR).json()
    url = f"{base}/Patient/{patient['id']}"

    def update(session, i):
        body = dict(patient, name=[{"family": f"Writer{i}"}])
        return session.put(url, json=body, headers={**FHIR, "If-Match": 'W/"1"'}, timeout=60)

    responses = all_at_once(CLIENTS, update)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    assert all(s in (409, 412) for s in statuses if s != 200), statuses
    for loser in (r for r in responses if r.status_code != 200):
        assert loser.json()["resourceType"] == "OperationOutcome"
    winner = next(r for r in responses if r.status_code == 200).json()
    current = requests.get(url).json()
    assert current["meta"]["versionId"] == "2" and current["name"] == winner["name"]
    assert requests.get(f"{url}/_history/3").status_code == 404


def test_updates_without_if_match_all_land_as_distinct_versions(base):
    patient = requests.post(f"{base}/Patient", json=make_patient(), headers=FHIR).json()
    url = f"{base}/Patient/{patient['id']}"

    def update(session, i):
        return session.put(url, json=dict(patient, name=[{"family": f"Writer{i}"}]), headers=FHIR, timeout=60)

    responses = all_at_once(CLIENTS, update)
    # No If-Match: a request that loses a race may be told to retry (409), but none is lost
    # silently: every 200 produced its own version.
    won = [r for r in responses if r.status_code == 200]
    assert all(r.status_code in (200, 409) for r in responses), [r.status_code for r in responses]
    assert sorted(int(r.json()["meta"]["versionId"]) for r in won) == list(range(2, 2 + len(won)))
    assert requests.get(url).json()["meta"]["versionId"] == str(1 + len(won))


def test_concurrent_conditional_creates_create_one_resource(base):
    mrn = "race-1"
    query = f"identifier=http://hospital.example.org/mrn|{mrn}"

    def create(session, i):
        return session.post(f"{base}/Patient", json=make_patient(mrn), timeout=60,
                            headers={**FHIR, "If-None-Exist": query})

    responses = all_at_once(CLIENTS, create)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1, statuses
    assert set(statuses) <= {200, 201}, statuses
    assert len({r.json()["id"] for r in responses}) == 1
    assert len(requests.get(f"{base}/Patient?{query}").json().get("entry", [])) == 1
