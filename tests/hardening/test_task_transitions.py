"""Issue 15, item 14: only the worker moves a Task through its lifecycle; a client may cancel
an active Task and nothing else, on every write path (PUT, PATCH, Bundles)."""
from __future__ import annotations

import pytest

from ..factories import make_imaging_study, make_patient


def make_task(client, status: str) -> dict:
    patient = client.post("/fhir/Patient", json=make_patient()).json["id"]
    study = client.post("/fhir/ImagingStudy", json=make_imaging_study(f"Patient/{patient}")).json["id"]
    body = {"resourceType": "Task", "status": status, "intent": "order", "businessStatus": {"text": "done"},
            "focus": {"reference": f"ImagingStudy/{study}"}, "for": {"reference": f"Patient/{patient}"}}
    response = client.post("/fhir/Task", json=body)
    assert response.status_code == 201, response.json
    return response.json


def patch_status(client, task: dict, status: str):
    return client.patch(f"/fhir/Task/{task['id']}", json=[{"op": "replace", "path": "/status", "value": status}],
                        headers={"Content-Type": "application/json-patch+json"})


@pytest.mark.parametrize("new", ["cancelled", "in-progress", "requested", "failed"])
def test_a_completed_task_cannot_be_moved_by_a_client(client, new):
    task = make_task(client, "completed")
    response = patch_status(client, task, new)
    assert response.status_code == 409
    assert response.json["issue"][0]["expression"] == ["Task.status"]
    assert client.get(f"/fhir/Task/{task['id']}").json["status"] == "completed"  # nothing written


def test_an_active_task_can_be_cancelled_and_not_completed(client):
    requested = make_task(client, "requested")
    assert patch_status(client, requested, "completed").status_code == 409
    assert patch_status(client, requested, "cancelled").status_code == 200
    running = make_task(client, "in-progress")
    body = {**client.get(f"/fhir/Task/{running['id']}").json, "status": "cancelled"}
    assert client.put(f"/fhir/Task/{running['id']}", json=body).status_code == 200


def test_other_changes_that_keep_the_status_are_allowed(client):
    task = make_task(client, "completed")
    body = {**client.get(f"/fhir/Task/{task['id']}").json, "note": [{"text": "checked by radiology"}]}
    assert client.put(f"/fhir/Task/{task['id']}", json=body).status_code == 200


def test_a_transaction_that_reopens_a_task_names_its_entry_and_writes_nothing(client):
    task = make_task(client, "failed")
    body = {**client.get(f"/fhir/Task/{task['id']}").json, "status": "requested"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": make_patient(), "request": {"method": "POST", "url": "Patient"}},
        {"resource": body, "request": {"method": "PUT", "url": f"Task/{task['id']}"}}]}
    response = client.post("/fhir", json=bundle)
    assert response.status_code == 409
    assert response.json["issue"][0]["expression"] == ["Bundle.entry[1].request"]
    assert client.get(f"/fhir/Task/{task['id']}").json["status"] == "failed"
