"""The console's page and its JSON (RQ workers and queues, replication links), authorized
by the same bearer token as FHIR."""
from __future__ import annotations

import pytest
from redis import Redis
from rq import Queue, Worker

from fhirimg.app import create_app
from fhirimg.config import load_config

from ..auth_support import authorized


@pytest.fixture
def redis_config(database, redis_server):
    url, _ = database
    return load_config(env={}, read_files=False, overrides={"database_url": url, "redis_url": redis_server.url})


@pytest.fixture
def console_app(redis_config, engine):
    return create_app(redis_config, engine=engine)


def test_the_page_is_public_and_runs_only_its_own_script(app):
    page = app.test_client().get("/console")
    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Referrer-Policy"] == "no-referrer"
    html = page.get_data(as_text=True)
    assert 'data-client="fhirimg-console"' in html and "/console/static/console.js" in html and "<script>" not in html
    assert app.test_client().get("/console/callback?code=x&state=y").status_code == 200
    script = app.test_client().get("/console/static/console.js")
    assert script.status_code == 200 and "code_challenge_method" in script.get_data(as_text=True)


def test_queues_and_workers_are_shown_to_operators(console_app, redis_server):
    connection = Redis.from_url(redis_server.url)
    Queue("fhirimg-urgent", connection=connection).enqueue_call("fhirimg.transfer.jobs.retrieve_job", args=("t1",),
                                                                description="retrieve Task/t1")
    worker = Worker([Queue("fhirimg", connection=connection)], connection=connection, name="w-test")
    worker.register_birth()
    try:
        body = authorized(console_app).get("/console/api/workers").json
    finally:
        worker.register_death()
    queues = {q["name"]: q for q in body["queues"]}
    assert body["redis"] == "up" and queues["fhirimg-urgent"]["waiting"] == 1
    assert queues["fhirimg-urgent"]["oldest_wait_seconds"] >= 0 and queues["fhirimg"]["waiting"] == 0
    (listed,) = [w for w in body["workers"] if w["name"] == "w-test"]
    assert listed["queues"] == ["fhirimg"] and listed["seconds_since_heartbeat"] is not None


def test_the_console_json_needs_a_token_that_reaches_tasks(console_app):
    assert console_app.test_client().get("/console/api/workers").status_code == 401
    refused = authorized(console_app, scope="system/Patient.rs").get("/console/api/workers")
    assert refused.status_code == 403 and "Task" in refused.json["issue"][0]["diagnostics"]
    assert authorized(console_app, scope="system/Task.rs").get("/console/api/replication").status_code == 403


def test_redis_down_is_a_503_outcome(database, engine):
    url, _ = database
    config = load_config(env={}, read_files=False, overrides={"database_url": url, "redis_url": "redis://127.0.0.1:1/0"})
    answer = authorized(create_app(config, engine=engine)).get("/console/api/workers")
    assert answer.status_code == 503 and answer.json["resourceType"] == "OperationOutcome"
    assert "Redis" in answer.json["issue"][0]["diagnostics"]


def test_replication_links_are_listed(database, engine):
    url, _ = database
    config = load_config(env={}, read_files=False, overrides={
        "database_url": url,
        "replicate": {"links": [{"name": "from-a", "direction": "pull", "url": "http://127.0.0.1:9/fhir"}]}})
    body = authorized(create_app(config, engine=engine)).get("/console/api/replication").json
    (link,) = body["links"]
    assert link["name"] == "from-a" and link["direction"] == "pull" and link["last_error"] == "never ran"


def test_a_transfer_s_live_progress_is_read_by_who_may_read_its_task(console_app, redis_server):
    from fhirimg.transfer.progress import redis_publisher
    client = authorized(console_app)
    task = client.post("/fhir/Task", json={"resourceType": "Task", "status": "requested", "intent": "order"}).json
    assert client.get(f"/console/api/transfers/{task['id']}").status_code == 404
    redis_publisher(Redis.from_url(redis_server.url), task["id"])({"now_ms": 1, "steps": {}, "bytes": 7,
                                                                   "instances": 1, "samples": [[1, 7, 1]]})
    assert client.get(f"/console/api/transfers/{task['id']}").json["bytes"] == 7
    assert authorized(console_app, scope="system/Patient.rs").get(f"/console/api/transfers/{task['id']}").status_code == 403
    assert client.get("/console/api/transfers/bad%20id").status_code == 400
