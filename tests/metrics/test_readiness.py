"""/readyz: 200 when the database, its schema, Redis and the blob store answer; 503 naming
what does not."""
from __future__ import annotations

import time

from sqlalchemy import text

from fhirimg.metrics.readiness import Readiness


def readyz(app):
    response = app.test_client().get("/readyz")
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.json


def test_ready_when_everything_answers(make_app, redis_server):
    status, report = readyz(make_app(anonymous=True, redis_url=redis_server.url))
    assert status == 200 and report["status"] == "ready" and report["failed"] == []
    assert {name: check["status"] for name, check in report["checks"].items()} == {
        "database": "pass", "schema": "pass", "redis": "pass", "blob_store": "pass"}


def test_without_redis_url_redis_is_skipped_not_failed(make_app):
    status, report = readyz(make_app(anonymous=True))
    assert status == 200 and report["checks"]["redis"]["status"] == "skipped"


def test_503_naming_redis_when_redis_is_down(make_app, redis_server):
    app = make_app(anonymous=True, redis_url=redis_server.url, metrics={"readiness_timeout": 1.0})
    assert readyz(app)[0] == 200
    redis_server.stop()
    status, report = readyz(app)
    assert status == 503 and report["status"] == "unavailable" and report["failed"] == ["redis"]
    assert report["checks"]["redis"]["status"] == "fail" and report["checks"]["redis"]["error"]
    assert report["checks"]["database"]["status"] == "pass"


def test_503_naming_the_blob_store_when_it_cannot_take_a_file(make_app, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the blob root should be")
    status, report = readyz(make_app(anonymous=True, transfer={"blob_root": str(blocker / "blobs")}))
    assert status == 503 and report["failed"] == ["blob_store"]


def test_the_probe_file_does_not_stay_in_the_blob_store(make_app, tmp_path):
    readyz(make_app(anonymous=True))
    assert list((tmp_path / "var" / "blobs" / ".staging").iterdir()) == []


def test_503_naming_the_schema_when_the_database_is_at_another_revision(make_app, engine):
    app = make_app(anonymous=True)
    with engine.begin() as conn:  # as if a newer fhirimg had upgraded the database meanwhile
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedbeef'"))
    status, report = readyz(app)
    assert status == 503 and report["failed"] == ["schema"]
    assert "f00dfeedbeef" in report["checks"]["schema"]["error"]


def test_a_check_that_does_not_answer_in_time_fails_as_no_answer():
    readiness = Readiness({"slow": lambda: time.sleep(1.0), "quick": lambda: None}, timeout=0.2)
    started = time.monotonic()
    ready, report = readiness.report()
    assert time.monotonic() - started < 0.8
    assert not ready and report["failed"] == ["slow"] and "no answer within" in report["checks"]["slow"]["error"]
    assert report["checks"]["quick"]["status"] == "pass"
