"""SubscriptionTopic (shipped, read-only) and what a Subscription must be to be stored."""
from __future__ import annotations

import pytest
from fhir.resources import get_fhir_model_class

from ..auth_support import authorized
from ..conftest import table_counts
from .conftest import TOPIC_BASE, subscription


def test_topics_are_read_and_searched_and_valid_r5(subs_client):
    bundle = subs_client.get("/fhir/SubscriptionTopic").get_json()
    ids = {e["resource"]["id"] for e in bundle["entry"]}
    assert ids == {"imagingstudy-changed", "imagingstudy-available", "task-status", "patient-changed"}
    for entry in bundle["entry"]:
        get_fhir_model_class("SubscriptionTopic").model_validate(entry["resource"])
    one = subs_client.get("/fhir/SubscriptionTopic/task-status").get_json()
    assert {f["filterParameter"] for f in one["canFilterBy"]} == {"focus", "status", "code", "patient"}
    found = subs_client.get(f"/fhir/SubscriptionTopic?url={TOPIC_BASE}/patient-changed").get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["patient-changed"]
    assert subs_client.get("/fhir/SubscriptionTopic?resource=Task").get_json()["total"] == 1
    assert subs_client.get("/fhir/SubscriptionTopic/nope").status_code == 404
    refused = subs_client.post("/fhir/SubscriptionTopic", json=one)
    assert refused.status_code == 405 and refused.get_json()["resourceType"] == "OperationOutcome"


def test_capability_statement_lists_topics_subscription_and_operations(subs_client):
    rest = subs_client.get("/fhir/metadata").get_json()["rest"][0]
    kinds = {r["type"]: r for r in rest["resource"]}
    assert "SubscriptionTopic" in kinds and "Subscription" in kinds
    assert {"status", "events", "get-ws-binding-token"} <= {op["name"] for op in kinds["Subscription"].get("operation", [])}
    topics = {e["valueCanonical"] for e in kinds["Subscription"]["extension"]}
    assert topics == {f"{TOPIC_BASE}/{t}" for t in ("imagingstudy-changed", "imagingstudy-available", "task-status",
                                                    "patient-changed")}
    from fhir.resources import get_fhir_model_class
    get_fhir_model_class("CapabilityStatement").model_validate(subs_client.get("/fhir/metadata").get_json())


BAD = [
    ({"topic": "http://example.org/unknown"}, "Subscription.topic"),
    ({"filterBy": [{"filterParameter": "performer", "value": "x"}]}, "Subscription.filterBy[0].filterParameter"),
    ({"filterBy": [{"filterParameter": "patient", "comparator": "gt", "value": "Patient/1"}]},
     "Subscription.filterBy[0].comparator"),
    ({"channelType": {"code": "email"}}, "Subscription.channelType"),
    ({"endpoint": "ftp://example.org/x"}, "Subscription.endpoint"),
    ({"endpoint": "http://169.254.169.254/latest/meta-data"}, "Subscription.endpoint"),
    ({"endpoint": "http://127.0.0.1:1/hook"}, "Subscription.endpoint"),  # loopback, a port not listed
    ({"endpoint": "http://localhost:6379/"}, "Subscription.endpoint"),
    ({"parameter": [{"name": "Host", "value": "evil"}]}, "Subscription.parameter[0].name"),
    ({"parameter": [{"name": "X-A", "value": "a\r\nX-B: b"}]}, "Subscription.parameter[0].value"),
    ({"parameter": [{"name": "Authorization", "value": "Bearer \u2713"}]}, "Subscription.parameter[0].value"),
    ({"status": "active"}, "Subscription.status"),
    ({"content": "everything"}, "Subscription.content"),
    ({"heartbeatPeriod": 0}, "Subscription.heartbeatPeriod"),
]


@pytest.mark.parametrize("change,path", BAD, ids=[p for _, p in BAD])
def test_a_bad_subscription_is_refused_naming_the_element_and_nothing_is_written(subs_client, engine, receiver,
                                                                                   change, path):
    before = table_counts(engine)
    response = subs_client.post("/fhir/Subscription", json={**subscription(receiver.url), **change})
    assert response.status_code in (400, 422), response.get_json()
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(path in e for issue in outcome["issue"] for e in issue.get("expression", [])), outcome
    assert table_counts(engine) == before


def test_a_bad_subscription_in_a_transaction_names_its_entry_and_nothing_is_written(subs_client, engine, receiver):
    before = table_counts(engine)
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6e4a1c3e-4a4b-4c1c-8c41-2f5b7d6a9e01", "resource": subscription(receiver.url),
         "request": {"method": "POST", "url": "Subscription"}},
        {"fullUrl": "urn:uuid:6e4a1c3e-4a4b-4c1c-8c41-2f5b7d6a9e02",
         "resource": subscription("http://169.254.169.254/x"), "request": {"method": "POST", "url": "Subscription"}}]}
    response = subs_client.post("/fhir", json=bundle)
    assert response.status_code in (400, 422)
    expressions = [e for issue in response.get_json()["issue"] for e in issue.get("expression", [])]
    assert any(e.startswith("Bundle.entry[1]") and e.endswith("endpoint") for e in expressions), expressions
    assert table_counts(engine) == before


def test_a_client_may_not_set_active_but_may_turn_off_and_ask_again(subs_client, receiver):
    created = subs_client.post("/fhir/Subscription", json=subscription(receiver.url)).get_json()
    sub_id = created["id"]
    active = {**created, "status": "active"}
    refused = subs_client.put(f"/fhir/Subscription/{sub_id}", json=active)
    assert refused.status_code == 422
    assert refused.get_json()["issue"][0]["expression"] == ["Subscription.status"]
    assert subs_client.put(f"/fhir/Subscription/{sub_id}", json={**created, "status": "off"}).status_code == 200
    assert subs_client.put(f"/fhir/Subscription/{sub_id}", json={**created, "status": "requested"}).status_code == 200


def test_subscriptions_are_searched_by_status_topic_and_url(subs_client, receiver):
    subs_client.post("/fhir/Subscription", json=subscription(receiver.url, topic="task-status"))
    subs_client.post("/fhir/Subscription", json=subscription(receiver.url))
    found = subs_client.get(f"/fhir/Subscription?topic={TOPIC_BASE}/task-status&status=requested").get_json()
    assert found["total"] == 1 if "total" in found else len(found["entry"]) == 1
    assert len(subs_client.get(f"/fhir/Subscription?url={receiver.url}").get_json()["entry"]) == 2


def test_a_subscription_is_its_clients_own(subs_app, subs_client, receiver, engine):
    """Another client, whatever its scopes, neither sees, changes, deletes, binds nor replays it;
    the owner may, and so may a patient-limited owner."""
    from .conftest import CHANNEL
    mine = subs_client.post("/fhir/Subscription", json=subscription(
        receiver.url, parameter=[{"name": "Authorization", "value": "Bearer mine"}])).get_json()
    ws = subs_client.post("/fhir/Subscription", json={**subscription(receiver.url), "channelType":
                                                      {**CHANNEL, "code": "websocket"}}).get_json()
    other = authorized(subs_app, client_id="other-client")
    for path in (f"/fhir/Subscription/{mine['id']}", f"/fhir/Subscription/{mine['id']}/_history/1",
                 f"/fhir/Subscription/{mine['id']}/$status", f"/fhir/Subscription/{mine['id']}/$events",
                 f"/fhir/Subscription/{ws['id']}/$get-ws-binding-token"):
        assert other.get(path).status_code in (403, 404), path
    assert other.put(f"/fhir/Subscription/{mine['id']}", json={**mine, "status": "off"}).status_code == 403
    assert other.delete(f"/fhir/Subscription/{mine['id']}").status_code == 403
    assert other.get("/fhir/Subscription").get_json().get("entry", []) == []
    assert "Bearer mine" not in other.get("/fhir/_history").get_data(as_text=True)
    assert subs_client.get(f"/fhir/Subscription/{mine['id']}").status_code == 200
    limited = authorized(subs_app, scope="system/Subscription.cruds system/ImagingStudy.rs", client_id="limited",
                         patients=["p1"])
    own = limited.post("/fhir/Subscription", json=subscription(receiver.url)).get_json()
    assert limited.get(f"/fhir/Subscription/{own['id']}").status_code == 200
    assert limited.put(f"/fhir/Subscription/{own['id']}", json={**own, "status": "off"}).status_code == 200
