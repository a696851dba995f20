"""The one access decision on every path: allowed and denied, on SQLite and PostgreSQL.

Two patients, A and B, each with a study (and its Endpoint) and a Task about the study;
tokens with different scopes and contexts ask for them."""
from __future__ import annotations

import time

import jwt
import orjson
import pytest
from sqlalchemy import insert

from fhirimg.transfer.schema import dicom_instance

from ..auth_support import authorized
from ..conftest import table_counts
from ..factories import make_endpoint, make_imaging_study, make_patient, new_uid


@pytest.fixture
def world(app, client):
    """Patients A and B, each with an Endpoint, an ImagingStudy (A: CT, B: MR) and a Task."""
    made = {}
    for name, modality in (("A", "CT"), ("B", "MR")):
        assert client.put(f"/fhir/Patient/{name}", json={**make_patient(), "id": name}).status_code == 201
        endpoint = client.post("/fhir/Endpoint", json=make_endpoint()).json["id"]
        uid = new_uid()
        study = client.post("/fhir/ImagingStudy", json=make_imaging_study(
            f"Patient/{name}", modality=modality, study_uid=uid,
            endpoint=[{"reference": f"Endpoint/{endpoint}"}])).json["id"]
        task = client.post("/fhir/Task", json={"resourceType": "Task", "status": "requested", "intent": "order",
                                              "focus": {"reference": f"ImagingStudy/{study}"}}).json["id"]
        made[name] = {"endpoint": endpoint, "study": study, "uid": uid, "task": task}
        store_instance(app, uid)
    return made


def store_instance(app, study_uid: str) -> None:
    """One indexed DICOM instance of the study, as the transfer worker leaves it."""
    sop = new_uid()
    with app.extensions["fhirimg.engine"].begin() as conn:
        conn.execute(insert(dicom_instance).values(
            sop_uid=sop, study_uid=study_uid, series_uid=new_uid(), sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=1, size=10, sha256="0" * 64,
            path=f"{study_uid}/x/{sop}.dcm", stored_ms=0,
            attributes=orjson.dumps({"0020000D": {"vr": "UI", "Value": [study_uid]}})))


def as_token(app, scope: str, patient: str | None = None):
    """A client whose token has `scope` and (optionally) a patient launch context, signed by
    the server's own key as its token endpoint signs."""
    keys = app.extensions["fhirimg.auth"].keys
    now = int(time.time())
    claims = {"iss": "http://localhost/auth", "aud": "http://localhost/fhir", "client_id": "app", "sub": "app",
              "iat": now, "exp": now + 120, "scope": scope}
    if patient:
        claims["patient"] = patient
    signing = keys.signing_key()
    web = app.test_client()
    web.environ_base["HTTP_AUTHORIZATION"] = "Bearer " + jwt.encode(claims, signing.private_key, "ES256",
                                                                     headers={"kid": signing.kid})
    return web


def forbidden(response, says: str | None = None):
    assert response.status_code == 403, response.get_data(as_text=True)
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.json["issue"][0]["code"] == "forbidden"
    if says:
        assert says in response.json["issue"][0]["diagnostics"]


def ids(bundle: dict, mode: str = "match") -> set[str]:
    return {e["resource"]["resourceType"] + "/" + e["resource"]["id"] for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") == mode}


# -- patient context -----------------------------------------------------------------------------
def test_patient_context_reads_its_own_compartment_only(app, world):
    web = as_token(app, "patient/*.rs", patient="A")
    a, b = world["A"], world["B"]
    for path in ("Patient/A", f"ImagingStudy/{a['study']}", f"Endpoint/{a['endpoint']}", f"Task/{a['task']}",
                 f"ImagingStudy/{a['study']}/_history/1", "Patient/A/_history"):
        assert web.get(f"/fhir/{path}").status_code == 200, path
    for path in ("Patient/B", f"ImagingStudy/{b['study']}", f"Endpoint/{b['endpoint']}", f"Task/{b['task']}",
                 f"ImagingStudy/{b['study']}/_history/1", "Patient/B/_history"):
        forbidden(web.get(f"/fhir/{path}"))


def test_patient_context_search_is_narrowed_in_sql_with_a_true_total(app, world):
    web = as_token(app, "patient/*.rs", patient="A")
    found = web.get("/fhir/ImagingStudy?_total=accurate&_include=ImagingStudy:endpoint"
                    "&_revinclude=Task:focus").json
    assert ids(found) == {f"ImagingStudy/{world['A']['study']}"} and found["total"] == 1
    assert ids(found, "include") == {f"Endpoint/{world['A']['endpoint']}", f"Task/{world['A']['task']}"}
    assert ids(web.get("/fhir/Endpoint").json) == {f"Endpoint/{world['A']['endpoint']}"}
    assert ids(web.get("/fhir/Patient").json) == {"Patient/A"}
    system = web.get("/fhir?_type=Patient,ImagingStudy").json
    assert ids(system) == {"Patient/A", f"ImagingStudy/{world['A']['study']}"}


def test_asking_for_another_patients_data_is_403_not_an_empty_bundle(app, world):
    web = as_token(app, "patient/*.rs", patient="A")
    forbidden(web.get("/fhir/ImagingStudy?patient=Patient/B"), "Patient/B")
    forbidden(web.get("/fhir/ImagingStudy?subject=B"), "Patient/B")
    assert web.get("/fhir/ImagingStudy?patient=Patient/A").status_code == 200


def test_type_and_system_history_of_a_patient_context_are_403(app, world):
    web = as_token(app, "patient/*.rs", patient="A")
    forbidden(web.get("/fhir/ImagingStudy/_history"))
    forbidden(web.get("/fhir/_history"))


def test_patient_scopes_without_a_patient_context_grant_nothing(app, world):
    web = as_token(app, "patient/*.rs")
    forbidden(web.get("/fhir/Patient/A"), "patient context")
    forbidden(web.get("/fhir/ImagingStudy"))


def test_patient_context_writes_stay_in_the_compartment_and_refusals_write_nothing(app, engine, world):
    web = as_token(app, "patient/*.cruds", patient="A")
    before = table_counts(engine)
    forbidden(web.post("/fhir/ImagingStudy", json=make_imaging_study("Patient/B")))
    forbidden(web.delete("/fhir/Patient/B"))
    forbidden(web.put(f"/fhir/ImagingStudy/{world['B']['study']}",
                      json={**make_imaging_study("Patient/A"), "id": world["B"]["study"]}))
    # moving A's study to B is a write outside the compartment too
    forbidden(web.put(f"/fhir/ImagingStudy/{world['A']['study']}",
                      json={**make_imaging_study("Patient/B"), "id": world["A"]["study"]}))
    assert table_counts(engine) == before
    assert web.post("/fhir/ImagingStudy", json=make_imaging_study("Patient/A")).status_code == 201


def test_one_forbidden_transaction_entry_refuses_the_whole_bundle(app, engine, world):
    web = as_token(app, "patient/*.cruds", patient="A")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": make_imaging_study("Patient/A"), "request": {"method": "POST", "url": "ImagingStudy"}},
        {"resource": make_imaging_study("Patient/B"), "request": {"method": "POST", "url": "ImagingStudy"}}]}
    before = table_counts(engine)
    response = web.post("/fhir", json=bundle)
    forbidden(response)
    assert response.json["issue"][0]["expression"] == ["Bundle.entry[1].request"]
    assert table_counts(engine) == before


def test_a_forbidden_batch_entry_is_that_entry_403(app, world):
    web = as_token(app, "patient/*.rs", patient="A")
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/A"}},
        {"request": {"method": "GET", "url": "Patient/B"}},
        {"request": {"method": "DELETE", "url": "Patient/A"}},
        {"request": {"method": "GET", "url": "ImagingStudy?status=available"}}]}
    answer = web.post("/fhir", json=bundle).json
    statuses = [e["response"]["status"].split()[0] for e in answer["entry"]]
    assert statuses == ["200", "403", "403", "200"]
    assert answer["entry"][3]["resource"]["total"] == 1


def test_dicomweb_follows_the_imaging_study_decision(app, world):
    web = as_token(app, "patient/*.rs", patient="A")
    studies = web.get("/dicom-web/studies").json
    assert [s["0020000D"]["Value"][0] for s in studies] == [world["A"]["uid"]]
    assert web.get(f"/dicom-web/studies/{world['A']['uid']}/metadata").status_code == 200
    for path in ("metadata", "series", "instances", "rendered", "thumbnail"):
        response = web.get(f"/dicom-web/studies/{world['B']['uid']}/{path}")
        forbidden(response)
    denied = web.get(f"/dicom-web/studies/{world['B']['uid']}")
    forbidden(denied)
    assert b"DICM" not in denied.data


def test_claiming_another_patients_study_uid_is_refused_and_opens_nothing(app, client, world):
    web = as_token(app, "patient/*.cruds", patient="A")
    claim = make_imaging_study("Patient/A", study_uid=world["B"]["uid"])
    forbidden(web.post("/fhir/ImagingStudy", json=claim), "Study Instance UID")
    bare = {**claim, "identifier": [{"system": "urn:dicom:uid", "value": world["B"]["uid"]}]}
    forbidden(web.post("/fhir/ImagingStudy", json=bare))  # the same UID without urn:oid:
    # Written by a system client anyway (both forms exist), B's images stay closed to A.
    assert client.post("/fhir/ImagingStudy", json=bare).status_code == 201
    forbidden(web.get(f"/dicom-web/studies/{world['B']['uid']}/metadata"))
    assert world["B"]["uid"] not in str(web.get("/dicom-web/studies").json)


def test_images_of_a_deleted_study_cannot_be_claimed(app, client, world):
    assert client.delete(f"/fhir/ImagingStudy/{world['B']['study']}").status_code == 200
    web = as_token(app, "patient/*.cruds", patient="A")
    forbidden(web.post("/fhir/ImagingStudy", json=make_imaging_study("Patient/A", study_uid=world["B"]["uid"])),
              "images")


def test_a_narrowed_token_cannot_change_a_shared_endpoint(app, world):
    web = as_token(app, "patient/*.cruds", patient="A")
    endpoint = web.get(f"/fhir/Endpoint/{world['A']['endpoint']}").json
    forbidden(web.put(f"/fhir/Endpoint/{endpoint['id']}", json={**endpoint, "address": "https://attacker.example"}),
              "shared")
    forbidden(web.delete(f"/fhir/Endpoint/{endpoint['id']}"))


def test_a_narrowed_write_may_not_point_at_another_patients_data(app, engine, world):
    web = as_token(app, "patient/*.cruds", patient="A")
    before = table_counts(engine)
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": "Patient/B"}, "focus": {"reference": f"ImagingStudy/{world['A']['study']}"}}
    forbidden(web.post("/fhir/Task", json=task), "Patient/B")
    forbidden(web.post("/fhir/Task", json={**task, "for": {"reference": "Patient/A"},
                                           "focus": {"reference": f"ImagingStudy/{world['B']['study']}"}}))
    assert table_counts(engine) == before


def test_chained_search_is_refused_to_a_narrowed_token(app, world):
    web = as_token(app, "patient/*.rs", patient="A")
    forbidden(web.get("/fhir/Task?focus:ImagingStudy.modality=MR"), "chained")
    forbidden(web.get("/fhir/Patient?_has:ImagingStudy:subject:modality=MR"))
    assert as_token(app, "system/*.rs").get("/fhir/Task?focus:ImagingStudy.modality=MR").status_code == 200


def test_a_create_scope_without_narrowing_does_not_reveal_matches_out_of_read_reach(app, client, engine, world):
    web = as_token(app, "system/Patient.c patient/Patient.rud", patient="A")
    mrn = client.get("/fhir/Patient/B").json["identifier"][0]
    response = web.post("/fhir/Patient", json=make_patient(), headers={
        "If-None-Exist": f"identifier={mrn['system']}|{mrn['value']}"})
    assert response.status_code == 201  # B does not exist for this token: a new Patient is made
    assert "Patient/B" not in response.get_data(as_text=True)


def test_history_and_retrieve_of_unknown_ids_look_like_those_out_of_reach(app, world):
    web = as_token(app, "patient/*.cruds", patient="A")
    forbidden(web.get("/fhir/Patient/no-such-id/_history"))
    forbidden(web.get("/fhir/Patient/B/_history"))
    forbidden(web.post("/fhir/ImagingStudy/no-such-id/$retrieve"))


def test_a_batch_vread_of_an_earlier_owners_version_is_refused(app, client, world):
    moved = client.get(f"/fhir/ImagingStudy/{world['B']['study']}").json
    moved["subject"] = {"reference": "Patient/A"}
    assert client.put(f"/fhir/ImagingStudy/{world['B']['study']}", json=moved).status_code == 200
    web = as_token(app, "patient/*.rs", patient="A")
    answer = web.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"ImagingStudy/{world['B']['study']}/_history/1"}},
        {"request": {"method": "GET", "url": f"ImagingStudy/{world['B']['study']}/_history/2"}}]}).json
    assert [e["response"]["status"].split()[0] for e in answer["entry"]] == ["403", "200"]


def test_an_earlier_version_of_another_patient_is_not_shown(app, client, world):
    moved = client.get(f"/fhir/ImagingStudy/{world['B']['study']}").json
    moved["subject"] = {"reference": "Patient/A"}  # re-assigned from B to A
    assert client.put(f"/fhir/ImagingStudy/{world['B']['study']}", json=moved).status_code == 200
    web = as_token(app, "patient/*.rs", patient="A")
    assert web.get(f"/fhir/ImagingStudy/{world['B']['study']}").status_code == 200
    assert web.get(f"/fhir/ImagingStudy/{world['B']['study']}/_history/2").status_code == 200
    forbidden(web.get(f"/fhir/ImagingStudy/{world['B']['study']}/_history/1"))
    forbidden(web.get(f"/fhir/ImagingStudy/{world['B']['study']}/_history"))


def test_patch_and_unchanged_put_of_an_unreachable_resource_reveal_nothing(app, world):
    web = as_token(app, "patient/*.rus", patient="A")
    empty_patch = web.patch("/fhir/Patient/B", data=b"[]", headers={"Content-Type": "application/json-patch+json"})
    forbidden(empty_patch)
    assert "Doe" not in empty_patch.get_data(as_text=True)
    probe = web.patch("/fhir/Patient/B", data=b'[{"op":"test","path":"/gender","value":"male"}]',
                      headers={"Content-Type": "application/json-patch+json"})
    forbidden(probe)  # not 422: a test op tells nothing about B


def test_scope_criteria_cannot_smuggle_a_second_scope(app, engine):
    from ..auth_support import register, token_form
    key = register(engine, "sly", "system/Patient.rs")
    web = app.test_client()
    answer = web.post("/auth/token", data=token_form(key, "sly", "system/Patient.rs?_id=x%20system/*.cruds"))
    assert answer.status_code == 400 or "system/*.cruds" not in answer.json.get("scope", "").split()


def test_conditional_operations_do_not_see_matches_outside_the_compartment(app, engine, world):
    web = as_token(app, "patient/*.cruds", patient="A")
    b_mrn = as_token(app, "system/*.rs").get("/fhir/Patient/B").json["identifier"][0]
    query = f"identifier={b_mrn['system']}|{b_mrn['value']}"
    before = table_counts(engine)
    deleted = web.delete(f"/fhir/Patient?{query}")  # B matches, but not for this token
    assert deleted.status_code == 200 and "nothing deleted" in deleted.get_data(as_text=True)
    assert table_counts(engine) == before
    assert as_token(app, "system/*.rs").get("/fhir/Patient/B").status_code == 200


# -- system scopes ---------------------------------------------------------------------------------
def test_search_without_read_searches_but_does_not_read(app, world):
    web = as_token(app, "system/ImagingStudy.s")
    assert len(ids(web.get("/fhir/ImagingStudy").json)) == 2
    forbidden(web.get(f"/fhir/ImagingStudy/{world['A']['study']}"), "read on ImagingStudy")
    forbidden(web.get(f"/dicom-web/studies/{world['A']['uid']}/metadata"))
    assert web.get("/dicom-web/studies").status_code == 200


def test_v1_user_star_star_reads_and_writes(app, world):
    web = as_token(app, "user/*.*")
    assert web.get("/fhir/Patient/B").status_code == 200
    assert web.post("/fhir/Patient", json=make_patient()).status_code == 201


def test_read_only_tokens_cannot_write_delete_or_retrieve(app, engine, world):
    web = as_token(app, "system/*.rs")
    before = table_counts(engine)
    forbidden(web.delete("/fhir/Patient/A"), "delete on Patient")
    forbidden(web.post("/fhir/Patient", json=make_patient()), "create on Patient")
    forbidden(web.patch(f"/fhir/Task/{world['A']['task']}", data=b'[{"op":"replace","path":"/status","value":"cancelled"}]',
                        headers={"Content-Type": "application/json-patch+json"}))
    forbidden(web.post(f"/fhir/ImagingStudy/{world['A']['study']}/$retrieve"), "create on Task")
    assert table_counts(engine) == before


def test_granular_scope_criteria_narrow_search_and_read(app, world):
    web = as_token(app, "system/ImagingStudy.rs?modality=CT")
    assert ids(web.get("/fhir/ImagingStudy").json) == {f"ImagingStudy/{world['A']['study']}"}
    assert web.get(f"/fhir/ImagingStudy/{world['A']['study']}").status_code == 200
    forbidden(web.get(f"/fhir/ImagingStudy/{world['B']['study']}"))
    forbidden(web.get("/fhir/ImagingStudy/_history"))  # history cannot be narrowed


def test_malformed_scopes_are_reported_and_never_widen(app, world):
    web = as_token(app, "system/*.dus system/Patient.rs")
    forbidden(web.get("/fhir/ImagingStudy"), "system/*.dus")
    assert web.get("/fhir/Patient/A").status_code == 200


def test_replication_feeds_need_unrestricted_search_of_the_types_returned(app, world):
    assert as_token(app, "system/*.rs").get("/fhir/_history").status_code == 200
    partial = as_token(app, "system/ImagingStudy.rs system/Patient.rs")
    forbidden(partial.get("/fhir/_history"), "Endpoint")
    assert partial.get("/fhir/_history?_type=ImagingStudy,Patient").status_code == 200


def test_a_client_registered_for_some_patients_sees_only_them(app, engine, world):
    web = authorized(app, "system/*.rs", client_id="limited", patients=["A"])
    assert ids(web.get("/fhir/ImagingStudy").json) == {f"ImagingStudy/{world['A']['study']}"}
    forbidden(web.get("/fhir/Patient/B"))
    forbidden(web.get("/fhir/_history"))


def test_retrieve_needs_task_write_and_study_read(app, world):
    web = as_token(app, "patient/ImagingStudy.rs patient/Task.c", patient="A")
    forbidden(web.post(f"/fhir/ImagingStudy/{world['B']['study']}/$retrieve"))
    assert web.post(f"/fhir/ImagingStudy/{world['A']['study']}/$retrieve").status_code == 202


def test_the_server_dicomweb_endpoint_says_the_same_token_is_needed():
    from fhirimg.transfer.studyupdate import REQUIRES_ACCESS_TOKEN, own_endpoint_resource
    endpoint = own_endpoint_resource("http://x/dicom-web")
    assert {"url": REQUIRES_ACCESS_TOKEN, "valueBoolean": True} in endpoint["extension"]


# -- CORS ------------------------------------------------------------------------------------------
def test_cors_answers_named_origins_only(database, engine):
    from fhirimg.app import create_app
    from fhirimg.config import load_config
    config = load_config(env={}, read_files=False, overrides={
        "database_url": database[0], "cors": {"allowed_origins": ["https://viewer.example.org"]}})
    web = create_app(config, engine=engine).test_client()
    preflight = web.options("/dicom-web/studies", headers={"Origin": "https://viewer.example.org",
                                                          "Access-Control-Request-Method": "GET",
                                                          "Access-Control-Request-Headers": "authorization"})
    assert preflight.status_code == 204
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    answer = web.get("/fhir/Patient", headers={"Origin": "https://viewer.example.org"})
    assert answer.headers["Access-Control-Allow-Origin"] == "https://viewer.example.org"
    assert "ETag" in answer.headers["Access-Control-Expose-Headers"]
    other = web.get("/fhir/Patient", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
