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

from ..auth_support import authorized
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
    driver.until(sub["id"], lambda: receiver.event_numbers() == [1, 2])
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
    bad = subs_client.get(f"/fhir/Subscription/{sub['id']}/$events?eventsSinceNumber=x")
    assert bad.status_code == 400 and bad.get_json()["issue"][0]["expression"] == ["eventsSinceNumber"]
    not_parameters = subs_client.post(f"/fhir/Subscription/{sub['id']}/$events",
                                      json={"resourceType": "Parameters", "parameter": {"name": "x"}})
    assert not_parameters.status_code == 400


def test_events_are_returned_up_to_the_limit_per_request(subs_app, subs_config, engine, receiver):
    from fhirimg.api.subscriptions import current_app  # noqa: F401 - the app's settings are replaced below
    from fhirimg.subscriptions.rules import EXTENSION, SubscriptionRules
    rules = subs_app.extensions[EXTENSION]
    subs_app.extensions[EXTENSION] = SubscriptionRules(type(rules.settings)(**{**rules.settings.__dict__,
                                                                               "max_events_per_request": 3}),
                                                       rules.policy)
    client = authorized(subs_app)
    from .conftest import Driver
    driver = Driver(engine, subs_config)
    driver.match()
    sub = client.post("/fhir/Subscription", json=subscription(receiver.url)).get_json()
    for patient in "abcde":
        client.post("/fhir/ImagingStudy", json=study(patient))
    driver.match()
    first = client.get(f"/fhir/Subscription/{sub['id']}/$events").get_json()["entry"][0]["resource"]
    assert [e["eventNumber"] for e in first["notificationEvent"]] == ["1", "2", "3"]
    rest = client.get(f"/fhir/Subscription/{sub['id']}/$events?eventsSinceNumber=4").get_json()["entry"][0]["resource"]
    assert [e["eventNumber"] for e in rest["notificationEvent"]] == ["4", "5"]
    driver.deliverer.close()


def test_undelivered_events_are_kept_past_the_retention(subs_client, driver, receiver, engine):
    sub = subs_client.post("/fhir/Subscription", json=subscription(receiver.url)).get_json()
    driver.run(sub["id"])
    receiver.down = True
    for patient in ("a", "b"):
        subs_client.post("/fhir/ImagingStudy", json=study(patient))
    driver.match()
    with engine.begin() as conn:
        conn.execute(update(subscription_event).values(occurred_ms=0))
    assert prune(engine, 30, int(time.time() * 1000)) == 0
    receiver.down = False
    driver.until(sub["id"], lambda: receiver.event_numbers() == [1, 2])
    assert prune(engine, 30, int(time.time() * 1000)) == 2  # delivered now: gone by age


def test_status_at_type_level_lists_the_callers_own_filtered_by_status(subs_client, subs_app, receiver):
    mine = [subs_client.post("/fhir/Subscription", json=subscription(receiver.url)).get_json() for _ in range(2)]
    subs_client.put(f"/fhir/Subscription/{mine[1]['id']}", json={**mine[1], "status": "off"})
    other = authorized(subs_app, client_id="someone-else")
    other.post("/fhir/Subscription", json=subscription(receiver.url))
    everything = subs_client.get("/fhir/Subscription/$status").get_json()
    assert everything["type"] == "searchset"
    assert {e["resource"]["subscription"]["reference"] for e in everything["entry"]} == \
        {f"Subscription/{m['id']}" for m in mine}
    off = subs_client.get("/fhir/Subscription/$status?status=off").get_json()
    assert [e["resource"]["subscription"]["reference"] for e in off["entry"]] == [f"Subscription/{mine[1]['id']}"]


def test_events_replay_is_audited_once_per_patient_it_carries(subs_client, driver, receiver):
    sub = subs_client.post("/fhir/Subscription", json=subscription(receiver.url)).get_json()
    for patient in ("replay-a", "replay-b", "replay-a"):
        subs_client.post("/fhir/ImagingStudy", json=study(patient))
    driver.match()
    assert subs_client.get(f"/fhir/Subscription/{sub['id']}/$events").status_code == 200
    for patient in ("replay-a", "replay-b"):
        trail = subs_client.get(f"/fhir/AuditEvent?patient=Patient/{patient}").get_json()
        replays = [e for e in trail.get("entry", []) if any(
            d.get("valueString") == "Subscription/$events"
            for x in e["resource"].get("entity", []) for d in x.get("detail", []))]
        assert len(replays) == 1, patient
