"""The websocket channel: $get-ws-binding-token, bind-with-token, several subscriptions on one
connection, events in order, heartbeats, refused tokens (a real listener on a loopback port)."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from fhirimg.subscriptions.websocket import Listener

from ..auth_support import authorized
from .conftest import CHANNEL, TOPIC_BASE, study

WS = {**CHANNEL, "code": "websocket"}


def ws_subscription(**extra) -> dict:
    return {"resourceType": "Subscription", "status": "requested", "topic": f"{TOPIC_BASE}/imagingstudy-changed",
            "channelType": WS, "content": "id-only", **extra}


@pytest.fixture
def listener(subs_config, engine):
    listener = Listener(subs_config, engine=engine)
    loop = asyncio.new_event_loop()
    started: asyncio.Future = loop.create_future()
    stop = asyncio.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(listener.serve("127.0.0.1", 0, started, stop)),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not started.done() and time.monotonic() < deadline:
        time.sleep(0.01)
    listener.url = f"ws://127.0.0.1:{started.result()}/fhir/websocket"
    yield listener
    loop.call_soon_threadsafe(stop.set)
    thread.join(10)


def binding_token(client, *ids) -> dict:
    query = "&".join(f"id={i}" for i in ids)
    response = client.get(f"/fhir/Subscription/$get-ws-binding-token?{query}")
    assert response.status_code == 200, response.get_json()
    return {p["name"]: p.get("valueString") or p.get("valueUrl") or p.get("valueDateTime")
            for p in response.get_json()["parameter"]}


def receive(ws, timeout: float = 10.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))


def test_bind_two_subscriptions_then_events_in_order(subs_client, driver, listener):
    first = subs_client.post("/fhir/Subscription", json=ws_subscription(
        filterBy=[{"filterParameter": "patient", "value": "Patient/a"}])).get_json()
    second = subs_client.post("/fhir/Subscription", json=ws_subscription(content="empty")).get_json()
    params = binding_token(subs_client, first["id"], second["id"])
    assert params["websocket-url"].startswith("ws://") and params["expiration"]
    with connect(listener.url) as ws:
        ws.send(f"bind-with-token: {params['token']}")
        handshakes = [receive(ws), receive(ws)]
        assert {h["entry"][0]["resource"]["type"] for h in handshakes} == {"handshake"}
        assert {h["entry"][0]["resource"]["subscription"]["reference"] for h in handshakes} == \
            {f"Subscription/{first['id']}", f"Subscription/{second['id']}"}
        assert subs_client.get(f"/fhir/Subscription/{first['id']}").get_json()["status"] == "active"
        for patient in ("a", "b", "a"):
            subs_client.post("/fhir/ImagingStudy", json=study(patient))
        driver.match()
        got: dict[str, list] = {}
        while sum(len(v) for v in got.values()) < 5:
            body = receive(ws)
            status = body["entry"][0]["resource"]
            assert status["type"] == "event-notification"
            got.setdefault(status["subscription"]["reference"], []).append(
                (int(status["notificationEvent"][0]["eventNumber"]), "focus" in status["notificationEvent"][0]))
    assert got[f"Subscription/{first['id']}"] == [(1, True), (2, True)]
    assert got[f"Subscription/{second['id']}"] == [(1, False), (2, False), (3, False)]


def test_heartbeat_on_an_idle_binding(subs_client, listener):
    sub = subs_client.post("/fhir/Subscription", json=ws_subscription(heartbeatPeriod=1)).get_json()
    params = binding_token(subs_client, sub["id"])
    with connect(listener.url) as ws:
        ws.send(f"bind-with-token: {params['token']}")
        assert receive(ws)["entry"][0]["resource"]["type"] == "handshake"
        started = time.monotonic()
        beat = receive(ws, timeout=3)
        assert beat["entry"][0]["resource"]["type"] == "heartbeat"
        assert 0.9 <= time.monotonic() - started <= 1.5


def test_an_unknown_token_is_refused_and_the_connection_closed(listener):
    with connect(listener.url) as ws:
        ws.send("bind-with-token: not-a-token")
        outcome = receive(ws)
        assert outcome["resourceType"] == "OperationOutcome"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        assert ws.close_code == 1008


def test_a_token_is_only_for_websocket_subscriptions_the_caller_may_read(subs_client, receiver):
    from .conftest import subscription
    hook = subs_client.post("/fhir/Subscription", json=subscription(receiver.url)).get_json()
    response = subs_client.get(f"/fhir/Subscription/{hook['id']}/$get-ws-binding-token")
    assert response.status_code == 400
    assert subs_client.get("/fhir/Subscription/$get-ws-binding-token?id=unknown").status_code == 404


def test_a_token_binds_only_its_clients_subscriptions(subs_app, subs_client, listener, engine):
    """A token made for one client does not bind another client's subscription, even if
    that subscription's id is slipped into the token's row."""
    from sqlalchemy import update

    from fhirimg.subscriptions.schema import subscription_ws_token
    from fhirimg.subscriptions.websocket import token_hash
    theirs = subs_client.post("/fhir/Subscription", json=ws_subscription()).get_json()
    other = authorized(subs_app, client_id="other-ws-client")
    mine = other.post("/fhir/Subscription", json=ws_subscription()).get_json()
    params = binding_token(other, mine["id"])
    with engine.begin() as conn:
        conn.execute(update(subscription_ws_token).where(subscription_ws_token.c.token_hash ==
                                                         token_hash(params["token"]))
                     .values(sub_ids=f"{mine['id']} {theirs['id']}"))
    with connect(listener.url) as ws:
        ws.send(f"bind-with-token: {params['token']}")
        handshake = receive(ws)
        assert handshake["entry"][0]["resource"]["subscription"]["reference"] == f"Subscription/{mine['id']}"
        with pytest.raises(TimeoutError):
            ws.recv(timeout=1)
