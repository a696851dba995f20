"""_include/_revinclude, _sort, _total, _summary, _elements, POST _search and system search."""
from __future__ import annotations

import pytest

from ..factories import make_endpoint, make_imaging_study, make_patient
from .helpers import entries, match_ids, search


@pytest.fixture
def world(repo):
    endpoint = repo.create("Endpoint", make_endpoint()).res_id
    patients = [repo.create("Patient", make_patient(mrn=f"M{i}", family=f"Fam{i}")).res_id for i in range(3)]
    studies = {}
    for i in range(9):
        pid = patients[i % 3]
        study = make_imaging_study(f"Patient/{pid}", started=f"2025-0{1 + i % 4}-1{i}T00:00:00Z",
                                   modality=["CT", "MR"][i % 2], study_uid=f"1.2.3.{9 - i}",
                                   endpoint=[{"reference": f"Endpoint/{endpoint}"}])
        stored = repo.create("ImagingStudy", study)
        studies[stored.res_id] = {**study, "id": stored.res_id}
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "focus": {"reference": f"ImagingStudy/{next(iter(studies))}"}, "for": {"reference": f"Patient/{patients[0]}"}}
    task_id = repo.create("Task", task).res_id
    return {"endpoint": endpoint, "patients": patients, "studies": studies, "task": task_id}


def test_include_endpoint_and_subject(client, world):
    pid = world["patients"][0]
    bundle = search(client, f"ImagingStudy?patient={pid}&_include=ImagingStudy:endpoint&_include=ImagingStudy:subject")
    want = {i for i, s in world["studies"].items() if s["subject"]["reference"] == f"Patient/{pid}"}
    assert match_ids(bundle) == want
    included = {(r["resourceType"], r["id"]) for r in entries(bundle, "include")}
    assert included == {("Endpoint", world["endpoint"]), ("Patient", pid)}


def test_include_star_and_typed_target(client, world):
    bundle = search(client, "ImagingStudy?_include=*&_count=100")
    types = {r["resourceType"] for r in entries(bundle, "include")}
    assert types == {"Endpoint", "Patient"}
    bundle = search(client, "ImagingStudy?_include=ImagingStudy:subject:Patient&_count=100")
    assert {r["resourceType"] for r in entries(bundle, "include")} == {"Patient"}


def test_revinclude_and_iterate(client, world):
    pid = world["patients"][0]
    bundle = search(client, f"Patient?_id={pid}&_revinclude=ImagingStudy:subject")
    want = {i for i, s in world["studies"].items() if s["subject"]["reference"] == f"Patient/{pid}"}
    assert {r["id"] for r in entries(bundle, "include")} == want
    bundle = search(client, f"Patient?_id={pid}&_revinclude=ImagingStudy:subject"
                            "&_include:iterate=ImagingStudy:endpoint&_revinclude:iterate=Task:focus")
    included = {(r["resourceType"], r["id"]) for r in entries(bundle, "include")}
    assert ("Endpoint", world["endpoint"]) in included and ("Task", world["task"]) in included


def test_sort_by_started_descending_then_id(client, world):
    bundle = search(client, "ImagingStudy?_sort=-started,_id&_count=100")
    got = [r["id"] for r in entries(bundle, "match")]
    want = sorted(world["studies"].values(), key=lambda s: s["id"])
    want = [s["id"] for s in sorted(want, key=lambda s: s["started"], reverse=True)]
    assert got == want


def test_sort_by_identifier_and_last_updated(client, world):
    bundle = search(client, "ImagingStudy?_sort=identifier&_count=100")
    got = [r["identifier"][0]["value"] for r in entries(bundle, "match")]
    assert got == sorted(got)
    bundle = search(client, "ImagingStudy?_sort=-_lastUpdated&_count=100")
    stamps = [r["meta"]["lastUpdated"] for r in entries(bundle, "match")]
    assert stamps == sorted(stamps, reverse=True)


def test_sort_by_several_keys(client, world):
    bundle = search(client, "ImagingStudy?_sort=modality,-started&_count=100")
    got = [r["id"] for r in entries(bundle, "match")]
    studies = world["studies"].values()
    key = [(s["series"][0]["modality"]["coding"][0]["code"], s["started"], s["id"]) for s in studies]
    want = [k[2] for k in sorted(sorted(key, key=lambda k: k[2]), key=lambda k: (k[0], _neg(k[1])))]
    assert got == want


def _neg(text):
    return [-ord(c) for c in text]


def test_total_modes(client, world):
    assert search(client, "ImagingStudy?modality=CT&_count=2&_total=accurate")["total"] == 5
    assert "total" not in search(client, "ImagingStudy?modality=CT&_count=2&_total=none")
    assert search(client, "ImagingStudy?modality=CT&_count=2&_total=estimate")["total"] > 0
    assert search(client, "ImagingStudy?modality=CT")["total"] == 5  # one complete page: free


def test_summary_count_true_text_data(client, world):
    counted = search(client, "ImagingStudy?_summary=count")
    assert counted["total"] == 9 and not counted.get("entry")
    summary = entries(search(client, "ImagingStudy?_summary=true&_count=1"), "match")[0]
    assert "series" in summary and "numberOfSeries" in summary and "text" not in summary
    assert any(t["code"] == "SUBSETTED" for t in summary["meta"]["tag"])
    text = entries(search(client, "ImagingStudy?_summary=text&_count=1"), "match")[0]
    assert set(text) <= {"resourceType", "id", "meta", "text", "status", "subject"}
    data = entries(search(client, "ImagingStudy?_summary=data&_count=1"), "match")[0]
    assert "series" in data and "text" not in data


def test_elements(client, world):
    got = entries(search(client, "ImagingStudy?_elements=identifier,started&_count=1"), "match")[0]
    assert {"identifier", "started", "status", "subject"} <= set(got) and "series" not in got


def test_post_search_equals_get(client, world):
    query = "modality=CT&_sort=-started&_count=3"
    got = client.post("/fhir/ImagingStudy/_search", data=query,
                      content_type="application/x-www-form-urlencoded").get_json()
    want = search(client, f"ImagingStudy?{query}")
    assert [e["resource"]["id"] for e in got["entry"]] == [e["resource"]["id"] for e in want["entry"]]
    assert [lk["url"] for lk in got["link"]] == [lk["url"] for lk in want["link"]]


def test_system_search_by_type(client, world):
    bundle = client.get("/fhir?_type=Patient,Endpoint&_count=100").get_json()  # [base]?, no redirect
    assert {(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]} == \
        {("Patient", p) for p in world["patients"]} | {("Endpoint", world["endpoint"])}
    assert search(client, "?_type=Patient&modality=CT", expect=400)
