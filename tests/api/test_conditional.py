"""Conditional create, update, delete and patch by search criteria (http.html#cond-update,
#ccreate, #cdelete, #patch) on SQLite and PostgreSQL."""
from __future__ import annotations

from urllib.parse import quote

import pytest

from ..conftest import table_counts
from ..factories import make_patient
from .outcomes import FHIR, PATCH, assert_outcome, create, nothing_written

MRN = "http://hospital.example.org/mrn"


def by_mrn(value: str) -> str:
    return "identifier=" + quote(f"{MRN}|{value}")


def live_ids(client, mrn: str) -> list[str]:
    bundle = client.get(f"/fhir/Patient?{by_mrn(mrn)}").get_json()
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


# --- conditional create (If-None-Exist) ------------------------------------------------

def test_conditional_create_without_match_creates(client):
    response = create(client, make_patient("c-1"), **{"If-None-Exist": by_mrn("c-1")})
    assert response.status_code == 201
    assert live_ids(client, "c-1") == [response.get_json()["id"]]


def test_conditional_create_with_one_match_returns_it_and_writes_nothing(client, engine):
    first = create(client, make_patient("c-2")).get_json()
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient("c-2", family="Other"),
                               headers={**FHIR, "If-None-Exist": by_mrn("c-2")})
    assert response.status_code == 200
    assert response.get_json()["id"] == first["id"]
    assert response.get_json()["name"][0]["family"] == "Doe"  # the existing one, unchanged
    assert response.headers["ETag"] == 'W/"1"'


def test_conditional_create_by_id_criterion_matches(client, engine):
    first = create(client, make_patient("c-3")).get_json()
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient("c-3"),
                               headers={**FHIR, "If-None-Exist": f"_id={first['id']}"})
    assert response.status_code == 200 and response.get_json()["id"] == first["id"]


def test_conditional_create_with_two_matches_is_412(client, engine):
    create(client, make_patient("dup"))
    create(client, make_patient("dup"))
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient("dup"),
                               headers={**FHIR, "If-None-Exist": by_mrn("dup")})
    assert_outcome(response, 412, says="match 2")


def test_conditional_create_ignores_deleted_matches(client):
    first = create(client, make_patient("c-4")).get_json()
    assert client.delete(f"/fhir/Patient/{first['id']}").status_code in (200, 204)
    response = create(client, make_patient("c-4"), **{"If-None-Exist": by_mrn("c-4")})
    assert response.get_json()["id"] != first["id"]


@pytest.mark.parametrize("criteria,expression", [("identifier=", "identifier"), ("nonsense=1", "nonsense")])
def test_conditional_create_with_bad_criteria_is_400(client, engine, criteria, expression):
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient(),
                               headers={**FHIR, "If-None-Exist": criteria})
    assert_outcome(response, 400, expression=expression)


def test_conditional_create_with_invalid_body_is_rejected_even_when_matching(client, engine):
    create(client, make_patient("c-5"))
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient("c-5", gender="sometimes"),
                               headers={**FHIR, "If-None-Exist": by_mrn("c-5")})
    assert_outcome(response, 422, expression="Patient.gender")  # a required binding: 422 as for create


# --- conditional update (PUT [type]?criteria) ---------------------------------------------

def test_conditional_update_without_match_and_without_id_creates(client):
    response = client.put(f"/fhir/Patient?{by_mrn('u-1')}", json=make_patient("u-1"), headers=FHIR)
    assert response.status_code == 201
    assert response.headers["Location"].endswith("/_history/1")
    assert live_ids(client, "u-1") == [response.get_json()["id"]]


def test_conditional_update_without_match_with_client_id_creates_that_id(client):
    response = client.put(f"/fhir/Patient?{by_mrn('u-2')}", json=make_patient("u-2", id="mine-u2"), headers=FHIR)
    assert response.status_code == 201 and response.get_json()["id"] == "mine-u2"


def test_conditional_update_with_one_match_updates_it(client):
    first = create(client, make_patient("u-3")).get_json()
    response = client.put(f"/fhir/Patient?{by_mrn('u-3')}", json=make_patient("u-3", family="Roe"), headers=FHIR)
    assert response.status_code == 200
    body = response.get_json()
    assert body["id"] == first["id"] and body["meta"]["versionId"] == "2" and body["name"][0]["family"] == "Roe"


def test_conditional_update_with_matching_id_in_body_updates(client):
    first = create(client, make_patient("u-4")).get_json()
    response = client.put(f"/fhir/Patient?{by_mrn('u-4')}", json=make_patient("u-4", id=first["id"], family="Poe"),
                          headers=FHIR)
    assert response.status_code == 200 and response.get_json()["meta"]["versionId"] == "2"


def test_conditional_update_whose_body_id_differs_from_the_match_is_400(client, engine):
    create(client, make_patient("u-5"))
    with nothing_written(engine):
        response = client.put(f"/fhir/Patient?{by_mrn('u-5')}", json=make_patient("u-5", id="someone-else"),
                              headers=FHIR)
    assert_outcome(response, 400, expression="Patient.id")


def test_conditional_update_with_two_matches_is_412(client, engine):
    create(client, make_patient("u-dup"))
    create(client, make_patient("u-dup"))
    with nothing_written(engine):
        response = client.put(f"/fhir/Patient?{by_mrn('u-dup')}", json=make_patient("u-dup"), headers=FHIR)
    assert_outcome(response, 412, says="match 2")


def test_conditional_update_with_stale_if_match_is_412(client, engine):
    create(client, make_patient("u-6"))
    with nothing_written(engine):
        response = client.put(f"/fhir/Patient?{by_mrn('u-6')}", json=make_patient("u-6", family="X"),
                              headers={**FHIR, "If-Match": 'W/"7"'})
    assert_outcome(response, 412)


def test_conditional_update_without_criteria_is_400(client, engine):
    with nothing_written(engine):
        response = client.put("/fhir/Patient", json=make_patient(), headers=FHIR)
    assert_outcome(response, 400, says="criteria")


# --- conditional delete (DELETE [type]?criteria) ------------------------------------------

def test_conditional_delete_with_one_match_deletes_it(client):
    first = create(client, make_patient("d-1")).get_json()
    response = client.delete(f"/fhir/Patient?{by_mrn('d-1')}")
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    assert_outcome(client.get(f"/fhir/Patient/{first['id']}"), 410)


def test_conditional_delete_without_match_writes_nothing(client, engine):
    with nothing_written(engine):
        response = client.delete(f"/fhir/Patient?{by_mrn('d-none')}")
    assert response.status_code in (200, 204)


def test_conditional_delete_with_two_matches_is_412(client, engine):
    create(client, make_patient("d-dup"))
    create(client, make_patient("d-dup"))
    with nothing_written(engine):
        response = client.delete(f"/fhir/Patient?{by_mrn('d-dup')}")
    assert_outcome(response, 412, says="match 2")
    assert len(live_ids(client, "d-dup")) == 2


def test_conditional_delete_without_criteria_is_400(client, engine):
    create(client, make_patient())
    with nothing_written(engine):
        response = client.delete("/fhir/Patient")
    assert_outcome(response, 400, says="criteria")


def test_conditional_delete_with_minimal_return_is_204(client):
    create(client, make_patient("d-2"))
    response = client.delete(f"/fhir/Patient?{by_mrn('d-2')}", headers={"Prefer": "return=minimal"})
    assert response.status_code == 204 and response.data == b""


# --- conditional patch (PATCH [type]?criteria) --------------------------------------------

def test_conditional_patch_with_one_match_patches_it(client):
    first = create(client, make_patient("p-1")).get_json()
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    response = client.patch(f"/fhir/Patient?{by_mrn('p-1')}", json=ops, headers=PATCH)
    assert response.status_code == 200
    assert response.get_json()["id"] == first["id"] and response.get_json()["gender"] == "male"


def test_conditional_patch_with_two_matches_is_412(client, engine):
    create(client, make_patient("p-dup"))
    create(client, make_patient("p-dup"))
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    with nothing_written(engine):
        response = client.patch(f"/fhir/Patient?{by_mrn('p-dup')}", json=ops, headers=PATCH)
    assert_outcome(response, 412)


def test_conditional_patch_without_match_is_404(client, engine):
    ops = [{"op": "replace", "path": "/gender", "value": "male"}]
    with nothing_written(engine):
        response = client.patch(f"/fhir/Patient?{by_mrn('p-none')}", json=ops, headers=PATCH)
    assert_outcome(response, 404)


def test_table_counts_sees_a_write(client, engine):
    """The guard the tests above rely on fails when something is written."""
    before = table_counts(engine)
    create(client, make_patient())
    assert table_counts(engine) != before


def test_if_none_exist_with_unescaped_url_value_matches(client, engine):
    """As curl users write it: the system URL and the bar unescaped."""
    first = create(client, make_patient("raw-1")).get_json()
    with nothing_written(engine):
        response = client.post("/fhir/Patient", json=make_patient("raw-1"),
                               headers={**FHIR, "If-None-Exist": f"identifier={MRN}|raw-1"})
    assert response.status_code == 200 and response.get_json()["id"] == first["id"]
