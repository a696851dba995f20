"""``POST [base]/ImagingStudy/{id}/$retrieve`` on SQLite and PostgreSQL: 202 + Task, one active Task per study."""
from __future__ import annotations

import threading

import pytest

from fhirimg.store import create_schema, make_engine
from fhirimg.transfer.schema import active_retrieve

from ..api.outcomes import assert_outcome
from ..conftest import table_counts
from ..factories import make_endpoint, make_imaging_study

FHIR = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def engine(database):
    """Both backends here (the transfer conftest's engine is SQLite only)."""
    url, schema = database
    eng = make_engine(url, schema=schema)
    create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def study_id(client) -> str:
    endpoint = client.post("/fhir/Endpoint", json=make_endpoint("http://127.0.0.1:9/dicom-web")).json["id"]
    study = make_imaging_study(endpoint=[{"reference": f"Endpoint/{endpoint}"}])
    return client.post("/fhir/ImagingStudy", json=study).json["id"]


def parameters(**values) -> dict:
    return {"resourceType": "Parameters", "parameter": [{"name": k, "valueCode": v} for k, v in values.items()]}


def test_retrieve_is_202_with_content_location_of_a_requested_task(client, study_id):
    response = client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve", json=parameters(priority="asap"),
                           headers=FHIR)
    assert response.status_code == 202
    task_id = response.json["id"]
    assert response.headers["Content-Location"] == f"http://localhost/fhir/Task/{task_id}"
    task = client.get(f"/fhir/Task/{task_id}").json
    assert task["status"] == "requested" and task["intent"] == "order" and task["priority"] == "asap"
    assert task["focus"] == {"reference": f"ImagingStudy/{study_id}"}
    assert task["code"]["coding"][0]["code"] == "retrieve"


def test_retrieve_without_a_body_is_routine(client, study_id):
    response = client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve")
    assert response.status_code == 202 and response.json["priority"] == "routine"


def test_second_retrieve_while_active_returns_the_active_task(client, study_id, engine):
    first = client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve").json["id"]
    before = table_counts(engine)
    second = client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve", json=parameters(priority="stat"),
                         headers=FHIR)
    assert second.status_code == 202 and second.json["id"] == first
    assert table_counts(engine) == before


def test_concurrent_retrieves_create_one_task(app, client, study_id, engine):
    ids, errors = [], []

    def one():
        try:
            own = app.test_client()
            own.environ_base.update(client.environ_base)  # the same bearer token
            response = own.post(f"/fhir/ImagingStudy/{study_id}/$retrieve")
            assert response.status_code == 202, response.json
            ids.append(response.json["id"])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(ids)) == 1
    with engine.connect() as conn:
        assert conn.execute(active_retrieve.select()).all()[0].task_id == ids[0]


def test_cancelled_task_lets_a_new_retrieve_start(client, study_id):
    first = client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve").json
    client.put(f"/fhir/Task/{first['id']}", json={**first, "status": "cancelled"})
    second = client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve").json
    assert second["id"] != first["id"] and second["status"] == "requested"


@pytest.mark.parametrize("body, expression", [
    (parameters(priority="soon"), "Parameters.parameter[0].valueCode"),
    (parameters(urgency="stat"), "Parameters.parameter[0].name"),
    ({"resourceType": "Patient"}, "Parameters"),
])
def test_bad_parameters_are_400_and_write_nothing(client, study_id, engine, body, expression):
    before = table_counts(engine)
    response = client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve", json=body, headers=FHIR)
    assert_outcome(response, 400, expression=expression)
    assert table_counts(engine) == before


def test_bad_priority_in_the_query_is_400(client, study_id, engine):
    before = table_counts(engine)
    assert_outcome(client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve?priority=now"), 400, expression="priority")
    assert table_counts(engine) == before


def test_retrieve_of_an_unknown_study_is_404_and_writes_nothing(client, engine):
    before = table_counts(engine)
    assert_outcome(client.post("/fhir/ImagingStudy/nope/$retrieve"), 404, says="ImagingStudy/nope")
    assert table_counts(engine) == before


def test_retrieve_of_a_deleted_study_is_404(client, study_id):
    client.delete(f"/fhir/ImagingStudy/{study_id}")
    assert_outcome(client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve"), 404)


def test_capability_statement_lists_the_operation(client):
    resources = client.get("/fhir/metadata").json["rest"][0]["resource"]
    study = next(r for r in resources if r["type"] == "ImagingStudy")
    assert any(op["name"] == "retrieve" for op in study.get("operation", []))


def test_study_without_a_dicomweb_endpoint_is_422_and_writes_nothing(client, engine):
    study_id = client.post("/fhir/ImagingStudy", json=make_imaging_study()).json["id"]
    before = table_counts(engine)
    assert_outcome(client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve"), 422,
                   expression="ImagingStudy.endpoint", says="no active Endpoint")
    assert table_counts(engine) == before


def test_study_without_a_study_uid_is_422(client):
    endpoint = client.post("/fhir/Endpoint", json=make_endpoint()).json["id"]
    study = make_imaging_study(endpoint=[{"reference": f"Endpoint/{endpoint}"}])
    study["identifier"] = [{"system": "urn:dicom:uid", "value": "urn:oid:1.2..3"}]
    study_id = client.post("/fhir/ImagingStudy", json=study).json["id"]
    assert_outcome(client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve"), 422, expression="ImagingStudy.identifier")


def test_body_that_is_not_json_is_415(client, study_id):
    response = client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve", data="priority=stat",
                           headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_outcome(response, 415)
