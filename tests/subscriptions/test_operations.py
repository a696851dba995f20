"""What an operator sees and what time does: `fhirimg subscriptions status`, the audit trail of
deliveries, retention of $events, and a subscription's `end`."""
from __future__ import annotations

import json
import time

from click.testing import CliRunner
from sqlalchemy import update

from fhirimg.cli import main
from fhirimg.subscriptions.jobs import prune
from fhirimg.subscriptions.schema import subscription_event

from ..services import database_url_of
from .conftest import study, subscription


def test_status_command_shows_backlog_and_last_error(subs_client, driver, receiver, database):
    sub = subs_client.post("/fhir/Subscription", json=subscription(receiver.url)).get_json()
    driver.run(sub["id"])
    receiver.down = True
    for patient in ("a", "b"):
        subs_client.post("/fhir/ImagingStudy", json=study(patient))
    driver.run(sub["id"])
    result = CliRunner().invoke(main, ["subscriptions", "status", "--json"],
                                env={"FHIRIMG_DATABASE_URL": database_url_of(database)})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    row = next(r for r in report["subscriptions"] if r["id"] == sub["id"])
    assert (row["events"], row["delivered"], row["backlog"], row["attempts"]) == (2, 0, 2, 1)
    assert "503" in row["last_error"] and row["endpoint_host"] == "127.0.0.1"
    assert receiver.url not in result.output  # the host only: a path may carry a secret
    text = CliRunner().invoke(main, ["subscriptions", "status"], env={"FHIRIMG_DATABASE_URL": database_url_of(database)})
    assert sub["id"] in text.output and "503" in text.output


def test_each_delivery_is_audited_under_the_events_patient_without_the_header_secret(subs_client, driver, receiver,
                                                                                    engine):
    sub = subs_client.post("/fhir/Subscription", json=subscription(
        receiver.url, parameter=[{"name": "Authorization", "value": "Bearer hook-secret-123"}])).get_json()
    subs_client.post("/fhir/ImagingStudy", json=study("audited"))
    driver.until(sub["id"], lambda: receiver.event_numbers() == [1])
    trail = subs_client.get("/fhir/AuditEvent?patient=Patient/audited").get_json()
    deliveries = [e["resource"] for e in trail.get("entry", [])
                  if any((x.get("what") or {}).get("reference") == f"Subscription/{sub['id']}"
                         for x in e["resource"].get("entity", []))]
    assert len(deliveries) == 1 and deliveries[0]["outcome"]["code"]["code"] == "0"
    from sqlalchemy import text
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT event FROM audit_event")).all()
    assert not any("hook-secret-123" in str(row[0]) for row in rows)


def test_events_older_than_the_retention_are_no_longer_replayed(subs_client, driver, receiver, engine):
    sub = subs_client.post("/fhir/Subscription", json=subscription(receiver.url)).get_json()
    for patient in ("a", "b"):
        subs_client.post("/fhir/ImagingStudy", json=study(patient))
    driver.match()
    with engine.begin() as conn:
        conn.execute(update(subscription_event).where(subscription_event.c.number == 1).values(occurred_ms=0))
    assert prune(engine, 30, int(time.time() * 1000)) == 1
    replay = subs_client.get(f"/fhir/Subscription/{sub['id']}/$events").get_json()
    assert [e["eventNumber"] for e in replay["entry"][0]["resource"]["notificationEvent"]] == ["2"]
    assert replay["entry"][0]["resource"]["eventsSinceSubscriptionStart"] == "2"


def test_a_subscription_past_its_end_is_turned_off(subs_client, driver, receiver):
    sub = subs_client.post("/fhir/Subscription", json=subscription(receiver.url, end="2020-01-01T00:00:00Z")).get_json()
    driver.run(sub["id"])
    assert subs_client.get(f"/fhir/Subscription/{sub['id']}").get_json()["status"] == "off"
    assert receiver.received == []


def test_events_operation_bounds_and_content_hint(subs_client, driver, receiver):
    sub = subs_client.post("/fhir/Subscription", json=subscription(receiver.url, content="id-only")).get_json()
    subs_client.post("/fhir/ImagingStudy", json=study("a"))
    driver.match()
    wider = subs_client.get(f"/fhir/Subscription/{sub['id']}/$events?content=full-resource").get_json()
    assert all("resource" not in entry for entry in wider["entry"][1:])  # never more than the subscription's level
    empty = subs_client.get(f"/fhir/Subscription/{sub['id']}/$events?content=empty").get_json()
    assert len(empty["entry"]) == 1
    too_many = subs_client.get(f"/fhir/Subscription/{sub['id']}/$events?eventsSinceNumber=1&eventsUntilNumber=5000")
    assert too_many.status_code == 400 and too_many.get_json()["issue"][0]["expression"] == ["eventsUntilNumber"]
    bad = subs_client.get(f"/fhir/Subscription/{sub['id']}/$events?eventsSinceNumber=x")
    assert bad.status_code == 400
