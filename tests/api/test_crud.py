"""create, read, vread, update, delete, PATCH and versioning (http.html)."""
from __future__ import annotations

import pytest

from ..conftest import table_counts
from ..factories import make_imaging_study, make_patient

FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}


def create(client, resource, **headers):
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**FHIR, **headers})
    assert response.status_code == 201, response.json
    return response


def test_create_assigns_id_version_and_location(client):
    response = create(client, make_patient())
    body = response.json
    assert body["meta"]["versionId"] == "1"
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert response.headers["Last-Modified"].endswith("GMT")


def test_create_ignores_client_id(client):
    body = create(client, make_patient(id="chosen-by-client")).json
    assert body["id"] != "chosen-by-client"


def test_read_returns_current_version(client):
    pid = create(client, make_patient(family="Curie")).json["id"]
    response = client.get(f"/fhir/Patient/{pid}")
    assert response.status_code == 200
    assert response.json["name"][0]["family"] == "Curie"
    assert response.headers["Content-Type"].startswith("application/fhir+json")


def test_update_makes_version_two_and_vread_keeps_version_one(client):
    patient = create(client, make_patient(family="Before")).json
    patient["name"][0]["family"] = "After"
    response = client.put(f"/fhir/Patient/{patient['id']}", json=patient, headers=FHIR)
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    old = client.get(f"/fhir/Patient/{patient['id']}/_history/1")
    assert old.json["name"][0]["family"] == "Before"
    assert client.get(f"/fhir/Patient/{patient['id']}").json["name"][0]["family"] == "After"


def test_update_as_create_keeps_client_id(client):
    response = client.put("/fhir/Patient/p-123", json=make_patient(id="p-123"), headers=FHIR)
    assert response.status_code == 201
    assert response.json["id"] == "p-123"


def test_update_with_identical_content_writes_no_version(client, engine):
    patient = create(client, make_patient()).json
    before = table_counts(engine)
    response = client.put(f"/fhir/Patient/{patient['id']}", json=patient, headers=FHIR)
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"1"'
    assert table_counts(engine) == before


def test_delete_then_read_is_410_and_vread_of_old_version_works(client):
    pid = create(client, make_patient()).json["id"]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    gone = client.get(f"/fhir/Patient/{pid}")
    assert gone.status_code == 410
    assert gone.json["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200


def test_stale_if_match_is_412_and_writes_nothing(client, engine):
    patient = create(client, make_patient()).json
    before = table_counts(engine)
    response = client.put(f"/fhir/Patient/{patient['id']}", json=patient,
                          headers={**FHIR, "If-Match": 'W/"7"'})
    assert response.status_code == 412
    assert response.json["resourceType"] == "OperationOutcome"
    assert table_counts(engine) == before


def test_json_patch_changes_one_element(client):
    study = create(client, make_imaging_study(series=1, instances=1)).json
    response = client.patch(f"/fhir/ImagingStudy/{study['id']}",
                            json=[{"op": "replace", "path": "/status", "value": "cancelled"}], headers=PATCH)
    assert response.status_code == 200
    assert response.json["status"] == "cancelled"
    assert response.json["meta"]["versionId"] == "2"


def test_validation_runs_before_the_write_lock_is_taken(client, backend, database, monkeypatch):
    """On SQLite a write transaction holds the database-wide lock from BEGIN; validating
    inside it would serialise every writer's CPU work. While the body is validated,
    another connection must be able to take the write lock at once."""
    if backend != "sqlite":
        pytest.skip("the database-wide write lock is SQLite's")
    import sqlite3

    from fhirimg.api import rest
    path = database[0].removeprefix("sqlite:///")
    original, checked = rest.validate_resource, []

    def validate_and_probe_lock(body, res_type):
        probe = sqlite3.connect(path, timeout=0, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")  # raises "database is locked" if a writer holds it
            probe.execute("ROLLBACK")
        finally:
            probe.close()
        checked.append(res_type)
        return original(body, res_type)

    monkeypatch.setattr(rest, "validate_resource", validate_and_probe_lock)
    patient = create(client, make_patient()).json
    assert client.put(f"/fhir/Patient/{patient['id']}", json=dict(patient, gender="male"), headers=FHIR).status_code == 200
    assert client.put("/fhir/Patient?identifier=x", json=make_patient("x"), headers=FHIR).status_code == 201
    assert checked == ["Patient"] * 3
