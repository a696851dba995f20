"""Events numbered from the change sequence and delivered at least once, in order, on both
databases: the matcher and a delivery run in the test's thread (what the worker runs)."""
from __future__ import annotations

import time

from sqlalchemy import select

from fhirimg.subscriptions.schema import subscription_state

from ..auth_support import authorized, register
from .conftest import study, subscription

DCM = "http://dicom.nema.org/resources/ontology/DCM"


def create(client, resource) -> dict:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def transaction(client, resources) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": r,
         "request": {"method": "POST", "url": r["resourceType"]}} for i, r in enumerate(resources)]}
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 200, response.get_json()


def sub_status(client, sub_id) -> dict:
    return client.get(f"/fhir/Subscription/{sub_id}/$status").get_json()["entry"][0]["resource"]


def test_normal_case_one_post_per_event_in_order_with_handshake_and_headers(subs_client, driver, receiver):
    sub = create(subs_client, subscription(receiver.url, filterBy=[{"filterParameter": "patient", "value": "Patient/a"}],
                                           parameter=[{"name": "Authorization", "value": "Bearer hook-secret"}]))
    for patient in ("a", "b", "a", "a", "c"):
        create(subs_client, study(patient))
    driver.until(sub["id"], lambda: len(receiver.event_numbers()) == 3)
    driver.run(sub["id"])
    assert [b["entry"][0]["resource"]["type"] for b in receiver.received] == ["handshake"] + ["event-notification"] * 3
    assert receiver.event_numbers() == [1, 2, 3]
    assert all(h["Authorization"] == "Bearer hook-secret" for h in receiver.headers)
    assert all(h["Content-Type"] == "application/fhir+json" for h in receiver.headers)
    first = receiver.of_kind("event-notification")[0]
    assert first["type"] == "subscription-notification"
    status = first["entry"][0]["resource"]
    assert status["resourceType"] == "SubscriptionStatus" and status["subscription"]["reference"] == f"Subscription/{sub['id']}"
    assert status["notificationEvent"][0]["focus"]["reference"].startswith("ImagingStudy/")
    assert "resource" not in first["entry"][1]  # id-only: the fullUrl, no content
    assert subs_client.get(f"/fhir/Subscription/{sub['id']}").get_json()["status"] == "active"
    assert sub_status(subs_client, sub["id"])["eventsSinceSubscriptionStart"] == "3"


def test_payload_shapes_empty_and_full_resource(subs_client, driver, receiver):
    empty = create(subs_client, subscription(receiver.url, content="empty"))
    full = create(subs_client, subscription(receiver.url, content="full-resource"))
    written = create(subs_client, study("p"))
    driver.until(empty["id"], lambda: len(receiver.of_kind("event-notification")) == 1)
    driver.until(full["id"], lambda: len(receiver.of_kind("event-notification")) == 2)
    by_sub = {b["entry"][0]["resource"]["subscription"]["reference"]: b for b in receiver.of_kind("event-notification")}
    shown_empty = by_sub[f"Subscription/{empty['id']}"]
    assert len(shown_empty["entry"]) == 1 and "focus" not in shown_empty["entry"][0]["resource"]["notificationEvent"][0]
    shown_full = by_sub[f"Subscription/{full['id']}"]
    assert shown_full["entry"][1]["resource"]["id"] == written["id"]
    assert shown_full["entry"][1]["resource"]["subject"] == {"reference": "Patient/p"}


def test_endpoint_down_while_1000_changes_commit_then_every_event_in_order(subs_client, driver, receiver, engine):
    sub = create(subs_client, subscription(receiver.url, filterBy=[{"filterParameter": "modality", "value": f"{DCM}|CT"}]))
    driver.until(sub["id"], lambda: receiver.of_kind("handshake"))
    receiver.down = True
    for batch in range(9):  # 900 in transactions of 100 (and an MR study in each, not matching)
        transaction(subs_client, [study(f"p{batch}-{i}") for i in range(100)] + [study("mr", modality="MR")])
    for i in range(100):
        create(subs_client, study(f"single-{i}"))
    deadline = time.monotonic() + 20
    while sub_status(subs_client, sub["id"])["status"] != "error" and time.monotonic() < deadline:
        driver.run(sub["id"])
        time.sleep(0.1)
    status = sub_status(subs_client, sub["id"])
    assert status["status"] == "error" and status["eventsSinceSubscriptionStart"] == "1000"
    assert "503" in status["error"][0]["text"]
    assert receiver.event_numbers() == []
    receiver.down = False
    driver.until(sub["id"], lambda: len(receiver.event_numbers()) >= 1000, timeout=120, pause=0.05)
    assert receiver.event_numbers() == list(range(1, 1001))
    assert subs_client.get(f"/fhir/Subscription/{sub['id']}").get_json()["status"] == "active"
    replay = []
    for since in range(1, 1001, 500):
        bundle = subs_client.get(f"/fhir/Subscription/{sub['id']}/$events?eventsSinceNumber={since}"
                                 f"&eventsUntilNumber={since + 499}").get_json()
        assert bundle["entry"][0]["resource"]["type"] == "query-event"
        replay += [int(e["eventNumber"]) for e in bundle["entry"][0]["resource"]["notificationEvent"]]
    assert replay == list(range(1, 1001))
    delivered = [e["focus"]["reference"] for b in receiver.of_kind("event-notification")
                 for e in b["entry"][0]["resource"]["notificationEvent"]]
    assert len(set(delivered)) == 1000


def test_handshake_failure_is_error_in_status(subs_client, driver, receiver):
    receiver.status = 500
    sub = create(subs_client, subscription(receiver.url))
    driver.run(sub["id"])
    status = sub_status(subs_client, sub["id"])
    assert status["status"] == "error" and "500" in status["error"][0]["text"]
    receiver.status = 200
    driver.until(sub["id"], lambda: sub_status(subs_client, sub["id"])["status"] == "active", timeout=10)


def test_retry_after_is_honoured(subs_client, driver, receiver, engine):
    sub = create(subs_client, subscription(receiver.url))
    driver.until(sub["id"], lambda: receiver.of_kind("handshake"))
    receiver.down, receiver.retry_after = True, "30"
    create(subs_client, study("x"))
    driver.run(sub["id"])
    with engine.connect() as conn:
        state = conn.execute(select(subscription_state).where(subscription_state.c.sub_id == sub["id"])).one()
    # Retry-After 30 s, bounded by max_backoff (0.2 s in this configuration): never sooner than that bound.
    assert state.next_attempt_ms - state.last_error_ms >= 200
    assert state.attempts == 1


def test_heartbeats_on_time(subs_client, driver, receiver):
    sub = create(subs_client, subscription(receiver.url, heartbeatPeriod=1))
    driver.run(sub["id"])  # handshake
    arrivals = []
    seen = 0
    deadline = time.monotonic() + 4.6
    while time.monotonic() < deadline:
        driver.run(sub["id"])
        if len(receiver.of_kind("heartbeat")) > seen:
            seen = len(receiver.of_kind("heartbeat"))
            arrivals.append(time.monotonic())
        time.sleep(0.01)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert len(arrivals) >= 4
    # On the period's schedule: beat k arrives k periods after the first, give or take what a
    # loaded machine delays one poll of this loop (CI once saw gaps 1.25 then 0.74: a late
    # beat, the next one on time); never two beats in a burst.
    offsets = [at - arrivals[0] - k for k, at in enumerate(arrivals)]
    assert max(offsets) - min(offsets) <= 0.35 and all(gap >= 0.6 for gap in gaps), gaps


def test_topics_task_status_and_images_available(subs_client, driver, receiver):
    tasks = create(subs_client, subscription(receiver.url, topic="task-status",
                                             filterBy=[{"filterParameter": "status", "value": "cancelled"}]))
    available = create(subs_client, subscription(receiver.url, topic="imagingstudy-available"))
    task = create(subs_client, {"resourceType": "Task", "status": "requested", "intent": "order"})
    task_v2 = subs_client.put(f"/fhir/Task/{task['id']}", json={**task, "status": "cancelled"}).get_json()
    subs_client.put(f"/fhir/Task/{task['id']}", json={**task_v2, "note": [{"text": "same status"}]})
    written = create(subs_client, study("q"))  # no images here yet
    with_images = {**written, "endpoint": [{"reference": "Endpoint/fhirimg-dicomweb"}], "numberOfInstances": 2}
    with_images = subs_client.put(f"/fhir/ImagingStudy/{written['id']}", json=with_images).get_json()
    subs_client.put(f"/fhir/ImagingStudy/{written['id']}", json={**with_images, "description": "no new images"})
    for sub_id in (tasks["id"], available["id"]):
        driver.until(sub_id, lambda: sub_status(subs_client, sub_id)["status"] == "active")
        driver.run(sub_id)
    by_sub = {}
    for b in receiver.of_kind("event-notification"):
        status = b["entry"][0]["resource"]
        by_sub.setdefault(status["subscription"]["reference"], []).extend(
            e["focus"]["reference"] for e in status["notificationEvent"])
    assert by_sub[f"Subscription/{tasks['id']}"] == [f"Task/{task['id']}/_history/2"]
    assert by_sub[f"Subscription/{available['id']}"] == [f"ImagingStudy/{written['id']}/_history/2"]


def test_a_subscriber_that_loses_access_to_a_patient_stops_receiving_its_resources(subs_app, driver, receiver, engine):
    scopes = "system/ImagingStudy.rs system/Subscription.cruds"
    writer = authorized(subs_app)
    client = authorized(subs_app, scope=scopes, client_id="hie", patients=["a", "b"])
    sub = create(client, subscription(receiver.url, content="full-resource"))
    for patient in ("a", "b", "z"):
        create(writer, study(patient))
    driver.until(sub["id"], lambda: len(receiver.event_numbers()) == 2)
    register(engine, "hie", scopes, patients=["a"])  # the registration no longer lists b
    for patient in ("a", "b"):
        create(writer, study(patient))
    driver.until(sub["id"], lambda: len(receiver.event_numbers()) == 3)
    time.sleep(0.2)
    driver.run(sub["id"])
    assert receiver.event_numbers() == [1, 2, 3]
    subjects = [e["resource"]["subject"]["reference"] for b in receiver.of_kind("event-notification")
                for e in b["entry"][1:]]
    assert subjects == ["Patient/a", "Patient/b", "Patient/a"]


def test_a_change_is_judged_by_the_subscription_of_its_time(subs_client, driver, receiver):
    """The matcher runs late (an outage): a study written while the subscription was off is
    not its event, those before and after are."""
    sub = create(subs_client, subscription(receiver.url))
    driver.match()
    a = create(subs_client, study("a"))
    current = subs_client.get(f"/fhir/Subscription/{sub['id']}").get_json()
    off = subs_client.put(f"/fhir/Subscription/{sub['id']}", json={**current, "status": "off"}).get_json()
    create(subs_client, study("b"))
    subs_client.put(f"/fhir/Subscription/{sub['id']}", json={**off, "status": "requested"})
    c = create(subs_client, study("c"))
    driver.match()
    events = subs_client.get(f"/fhir/Subscription/{sub['id']}/$events").get_json()["entry"][0]["resource"]
    assert [e["focus"]["reference"] for e in events["notificationEvent"]] == \
        [f"ImagingStudy/{a['id']}/_history/1", f"ImagingStudy/{c['id']}/_history/1"]


def test_an_endpoint_trickling_its_answer_is_cut_off_at_the_time_limit(subs_app, subs_config, engine):
    """An allow-listed endpoint that answers one byte every 0.3 s never trips a per-read
    timeout; the whole POST is still cut off at the subscription's timeout (1 s)."""
    import socket
    import threading

    from .conftest import Driver
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
                if stop.is_set():
                    break
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.3)
            conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    from fhirimg.config import load_config
    config = load_config(env={}, read_files=False, overrides={
        "database_url": subs_config["database_url"],
        "transfer": {"allow_loopback": False, "allowed_hosts": [f"127.0.0.1:{port}"]},
        "subscriptions": {"first_backoff": 0.05, "max_backoff": 0.2}})
    from fhirimg.app import create_app
    client = authorized(create_app(config, engine=engine))
    driver = Driver(engine, config)
    try:
        sub = create(client, subscription(f"http://127.0.0.1:{port}/hook", timeout=1))
        started = time.monotonic()
        done = driver.run(sub["id"])
        took = time.monotonic() - started
        assert done.failed and "over the time limit" in done.error, done
        assert took < 3, took
    finally:
        stop.set()
        listener.close()
        driver.deliverer.close()
