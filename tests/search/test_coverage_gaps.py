"""Search behaviour not covered elsewhere: :missing per type, ap and _lastUpdated prefixes,
_include=ImagingStudy:patient, Task and Patient parameters, sorts, links, system paging.

Expected ids are computed in Python from the resources the test created, not from the index.
"""
from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from ..factories import make_endpoint, make_imaging_study, make_patient
from .helpers import all_pages, entries, follow, link, match_ids, search


def _create(repo, res_type, resource):
    return repo.create(res_type, resource).res_id


# -- :missing on reference, date, string and uri ---------------------------------------
@pytest.fixture
def sparse(repo):
    """Studies, patients and endpoints where some have the element and some do not."""
    pid = _create(repo, "Patient", make_patient(mrn="S-1", family="Full"))
    studies = {}
    for i in range(4):
        study = make_imaging_study(f"Patient/{pid}", started=f"2025-02-0{i + 1}T00:00:00Z",
                                   meta={"source": f"http://src.example/s{i}"})
        if i == 1:
            study.pop("subject")
        if i == 2:
            study.pop("started")
        if i == 3:
            study.pop("meta")
        studies[_create(repo, "ImagingStudy", study)] = study
    patients = {pid: make_patient(mrn="S-1", family="Full")}
    nameless = make_patient(mrn="S-2")
    nameless["name"] = [{"given": ["Only"]}]
    patients[_create(repo, "Patient", nameless)] = nameless
    endpoints = {}
    for i in range(3):
        ep = make_endpoint(name=f"PACS {i}")
        if i == 0:
            ep.pop("name")
        endpoints[_create(repo, "Endpoint", ep)] = ep
    return {"studies": studies, "patients": patients, "endpoints": endpoints}


@pytest.mark.parametrize("param,has", [
    ("subject", lambda s: "subject" in s),
    ("patient", lambda s: "subject" in s),
    ("started", lambda s: "started" in s),
    ("_source", lambda s: "source" in s.get("meta", {})),
])
def test_missing_on_image_study_reference_date_uri(client, sparse, param, has):
    studies = sparse["studies"]
    present = {i for i, s in studies.items() if has(s)}
    assert match_ids(search(client, f"ImagingStudy?{param}:missing=false")) == present
    assert match_ids(search(client, f"ImagingStudy?{param}:missing=true")) == set(studies) - present


def test_missing_on_strings(client, sparse):
    patients = sparse["patients"]
    has_family = {i for i, p in patients.items() if any("family" in n for n in p["name"])}
    assert match_ids(search(client, "Patient?family:missing=false")) == has_family
    assert match_ids(search(client, "Patient?family:missing=true")) == set(patients) - has_family
    endpoints = sparse["endpoints"]
    named = {i for i, e in endpoints.items() if "name" in e}
    assert match_ids(search(client, "Endpoint?name:missing=false")) == named
    assert match_ids(search(client, "Endpoint?name:missing=true")) == set(endpoints) - named


# -- ap and _lastUpdated -----------------------------------------------------------------
def _range_ms(text: str) -> tuple[int, int]:
    """Inclusive ms range of a year, a day or a UTC second (only the forms these tests create)."""
    if len(text) == 4:
        year = int(text)
        low = datetime(year, 1, 1, tzinfo=UTC)
        width = (366 if calendar.isleap(year) else 365) * 86_400_000
    elif len(text) == 10:
        low = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
        width = 86_400_000
    else:
        low = datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        width = 1000
    start = int(low.timestamp()) * 1000
    return start, start + width - 1


def test_date_ap_matches_exactly_the_approximation_window(client, repo):
    value = "2020-01-01"
    vl, vh = _range_ms(value)
    # search.html#prefix as this server reads it: 10% of the distance from the value to now,
    # at least the value's own width, on either side
    gap = max(int(abs(time.time() * 1000 - (vl + vh) // 2) * 0.1), vh - vl + 1)
    base = datetime(2020, 1, 1, tzinfo=UTC)
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    starts = ["2020-01-01T12:00:00Z", "2019-12-31", "2020-01-02", "2019", "2010", "2030",
              (base - timedelta(milliseconds=gap // 2)).strftime(fmt),
              (base + timedelta(milliseconds=gap // 2)).strftime(fmt),
              (base - timedelta(milliseconds=int(gap * 1.5))).strftime(fmt),
              (base + timedelta(days=1, milliseconds=int(gap * 1.5))).strftime(fmt)]
    made = {_create(repo, "ImagingStudy", make_imaging_study("Patient/ap", started=s)): s for s in starts}
    want = {i for i, s in made.items() if _range_ms(s)[0] <= vh + gap and _range_ms(s)[1] >= vl - gap}
    assert 0 < len(want) < len(made)  # the window excludes on both sides
    assert any(_range_ms(s)[1] < vl - gap for s in made.values())
    assert any(_range_ms(s)[0] > vh + gap for s in made.values())
    assert match_ids(search(client, f"ImagingStudy?started=ap{value}")) == want


def _instant_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def test_last_updated_prefixes(client):
    stamps = {}
    for i in range(5):
        response = client.post("/fhir/Endpoint", json=make_endpoint(name=f"lu{i}"),
                               content_type="application/fhir+json")
        assert response.status_code == 201, response.get_data(as_text=True)
        body = response.get_json()
        stamps[body["id"]] = body["meta"]["lastUpdated"]
        time.sleep(0.01)
    ordered = sorted(stamps.items(), key=lambda kv: _instant_ms(kv[1]))
    pivot = ordered[2][1]
    p = _instant_ms(pivot)
    ms = {i: _instant_ms(s) for i, s in stamps.items()}
    cases = {"ge": lambda v: v >= p, "le": lambda v: v <= p, "lt": lambda v: v < p,
             "eq": lambda v: v == p, "gt": lambda v: v > p}
    for prefix, keep in cases.items():
        want = {i for i, v in ms.items() if keep(v)}
        got = match_ids(search(client, f"Endpoint?_lastUpdated={prefix}{quote(pivot)}&_count=100"))
        assert got == want, (prefix, pivot, stamps)
    assert match_ids(search(client, f"Endpoint?_lastUpdated={quote(pivot)}")) == {ordered[2][0]}


# -- _include=ImagingStudy:patient --------------------------------------------------------
def test_include_image_study_patient(client, repo):
    pids = [_create(repo, "Patient", make_patient(mrn=f"I{i}")) for i in range(3)]
    studies = {_create(repo, "ImagingStudy", make_imaging_study(f"Patient/{pids[i % 2]}", modality="XA")):
               pids[i % 2] for i in range(4)}
    bundle = search(client, "ImagingStudy?modality=XA&_include=ImagingStudy:patient")
    assert match_ids(bundle) == set(studies)
    included = entries(bundle, "include")
    assert sorted((r["resourceType"], r["id"]) for r in included) == sorted(("Patient", p) for p in set(studies.values()))
    for study in entries(bundle, "match"):
        assert study["subject"]["reference"] == f"Patient/{studies[study['id']]}"


# -- Task ------------------------------------------------------------------------------
@pytest.fixture
def tasks(repo):
    pid = _create(repo, "Patient", make_patient(mrn="T-P"))
    sid = _create(repo, "ImagingStudy", make_imaging_study(f"Patient/{pid}"))
    made = {}
    for i in range(6):
        task = {"resourceType": "Task",
                "identifier": [{"system": "urn:tasks", "value": f"T{i}"}],
                "status": ["requested", "in-progress", "completed"][i % 3],
                "intent": ["order", "plan"][i % 2],
                "code": {"coding": [{"system": "urn:codes", "code": ["read", "fetch"][i // 3]}]},
                "for": {"reference": f"Patient/{pid}"},
                "owner": {"reference": f"Practitioner/pr{i % 2}"},
                "requester": {"reference": f"Organization/org{i % 3}"},
                "authoredOn": f"2025-0{i + 1}-10T08:00:00Z"}
        if i < 3:
            task["focus"] = {"reference": f"ImagingStudy/{sid}"}
        made[_create(repo, "Task", task)] = task
    return {"study": sid, "tasks": made}


def _tasks_where(tasks, predicate):
    return {i for i, t in tasks["tasks"].items() if predicate(t)}


def test_task_token_parameters(client, tasks):
    assert match_ids(search(client, "Task?status=requested,completed")) == _tasks_where(
        tasks, lambda t: t["status"] in ("requested", "completed"))
    assert match_ids(search(client, "Task?intent=plan")) == _tasks_where(tasks, lambda t: t["intent"] == "plan")
    assert match_ids(search(client, "Task?code=urn:codes|fetch")) == _tasks_where(
        tasks, lambda t: t["code"]["coding"][0]["code"] == "fetch")
    assert match_ids(search(client, "Task?identifier=urn:tasks|T4")) == _tasks_where(
        tasks, lambda t: t["identifier"][0]["value"] == "T4")
    assert match_ids(search(client, "Task?identifier=urn:other|T4")) == set()


def test_task_reference_parameters(client, tasks):
    sid = tasks["study"]
    assert match_ids(search(client, f"Task?focus=ImagingStudy/{sid}")) == _tasks_where(
        tasks, lambda t: t.get("focus", {}).get("reference") == f"ImagingStudy/{sid}")
    assert match_ids(search(client, "Task?owner=Practitioner/pr1")) == _tasks_where(
        tasks, lambda t: t["owner"]["reference"] == "Practitioner/pr1")
    assert match_ids(search(client, "Task?requester=Organization/org2")) == _tasks_where(
        tasks, lambda t: t["requester"]["reference"] == "Organization/org2")
    assert match_ids(search(client, "Task?owner=Practitioner/pr1&intent=order")) == _tasks_where(
        tasks, lambda t: t["owner"]["reference"] == "Practitioner/pr1" and t["intent"] == "order")


@pytest.mark.parametrize("prefix,keep", [
    ("", lambda d: d.startswith("2025-03-10")), ("gt", lambda d: d[:10] > "2025-03-10"),
    ("lt", lambda d: d[:10] < "2025-03-10"), ("ge", lambda d: d[:10] >= "2025-03-10"),
    ("le", lambda d: d[:10] <= "2025-03-10"), ("ne", lambda d: not d.startswith("2025-03-10")),
])
def test_task_authored_on(client, tasks, prefix, keep):
    assert match_ids(search(client, f"Task?authored-on={prefix}2025-03-10")) == _tasks_where(
        tasks, lambda t: keep(t["authoredOn"]))


# -- Patient ---------------------------------------------------------------------------
@pytest.fixture
def people(repo):
    specs = [("female", "1970-01-01", "Anna", "Springfield", "555-0101"),
             ("male", "1980-05-20", "Bob", "Shelbyville", "555-0102"),
             ("female", "1980-12-31", "Annabel", "springfield", "555-0103"),
             ("other", "1990-07-04", "Carl", "Ogdenville", "555-0104"),
             ("male", "1975-03-15", "Dan", "North Haverbrook", "555-0101")]
    made = {}
    for n, (gender, birth, given, city, phone) in enumerate(specs):
        patient = make_patient(mrn=f"PP-{n}", family=f"Fam{n}", gender=gender, birthDate=birth,
                               address=[{"city": city}],
                               telecom=[{"system": "phone", "value": phone},
                                        {"system": "email", "value": f"p{n}@example.org"}])
        patient["name"][0]["given"] = [given]
        made[_create(repo, "Patient", patient)] = patient
    return made


def _people_where(people, predicate):
    return {i for i, p in people.items() if predicate(p)}


def test_patient_gender_identifier_given_city(client, people):
    assert match_ids(search(client, "Patient?gender=male")) == _people_where(people, lambda p: p["gender"] == "male")
    assert match_ids(search(client, "Patient?identifier=http://hospital.example.org/mrn|PP-3")) == _people_where(
        people, lambda p: p["identifier"][0]["value"] == "PP-3")
    assert match_ids(search(client, "Patient?given=ann")) == _people_where(
        people, lambda p: p["name"][0]["given"][0].lower().startswith("ann"))
    assert match_ids(search(client, "Patient?address-city=SPRINGFIELD")) == _people_where(
        people, lambda p: p["address"][0]["city"].lower().startswith("springfield"))


def test_patient_phone_and_telecom(client, people):
    want = _people_where(people, lambda p: p["telecom"][0]["value"] == "555-0101")
    assert match_ids(search(client, "Patient?phone=555-0101")) == want
    assert match_ids(search(client, "Patient?telecom=555-0101")) == want
    assert match_ids(search(client, "Patient?phone=p1@example.org")) == set()
    assert match_ids(search(client, "Patient?telecom=p1@example.org")) == _people_where(
        people, lambda p: p["telecom"][1]["value"] == "p1@example.org")


@pytest.mark.parametrize("query,keep", [
    ("1980", lambda d: d.startswith("1980")), ("eq1980-05-20", lambda d: d == "1980-05-20"),
    ("gt1980-05-20", lambda d: d > "1980-05-20"), ("lt1980-05-20", lambda d: d < "1980-05-20"),
    ("ge1980-05-20", lambda d: d >= "1980-05-20"), ("le1980-05-20", lambda d: d <= "1980-05-20"),
    ("sa1979", lambda d: d > "1979-12-31"), ("eb1980", lambda d: d < "1980-01-01"),
    ("ne1980", lambda d: not d.startswith("1980")),
])
def test_patient_birthdate_prefixes(client, people, query, keep):
    assert match_ids(search(client, f"Patient?birthdate={query}")) == _people_where(
        people, lambda p: keep(p["birthDate"]))


# -- sorts -----------------------------------------------------------------------------
def test_sort_by_identifier_matches_python_order(client, repo):
    uids = ["7.1", "10.2", "9", "100.3", "1.5", "55"]
    made = {_create(repo, "ImagingStudy", make_imaging_study("Patient/s", study_uid=u, modality="OT")): u
            for u in uids}
    bundle = search(client, "ImagingStudy?modality=OT&_sort=identifier")
    got = [r["id"] for r in entries(bundle, "match")]
    assert got == sorted(made, key=lambda i: f"urn:oid:{made[i]}")
    bundle = search(client, "ImagingStudy?modality=OT&_sort=-identifier")
    assert [r["id"] for r in entries(bundle, "match")] == list(reversed(got))


def test_sort_by_family_then_id_descending(client, repo):
    families = ["Brown", "Adams", "Clark", "Adams", "Brown", "Adams", "Evans"]
    made = {_create(repo, "Patient", make_patient(family=f)): f for f in families}
    bundle = search(client, "Patient?_sort=family,-_id")
    got = [r["id"] for r in entries(bundle, "match")]
    want = sorted(sorted(made, reverse=True), key=lambda i: made[i])
    assert got == want


# -- links and default page size -----------------------------------------------------------
def _params(url: str) -> list[tuple[str, str]]:
    return sorted(parse_qsl(urlsplit(url).query))


def test_self_link_holds_the_accepted_parameters(client, people):
    bundle = search(client, "Patient?gender=female&given=ann&_sort=-birthdate&_count=5&colour=blue")
    assert _params(link(bundle, "self")) == sorted(
        [("gender", "female"), ("given", "ann"), ("_sort", "-birthdate"), ("_count", "5")])
    assert [r["id"] for r in entries(bundle, "match")] == sorted(
        _people_where(people, lambda p: p["gender"] == "female" and p["name"][0]["given"][0].lower().startswith("ann")),
        key=lambda i: people[i]["birthDate"], reverse=True)


def test_default_page_size_is_20(client, repo):
    ids = {_create(repo, "Endpoint", make_endpoint(name=f"E{i}")) for i in range(25)}
    first = search(client, "Endpoint")
    assert len(entries(first, "match")) == 20
    assert ("_count", "20") in _params(link(first, "self"))
    second = follow(client, link(first, "next"))
    assert len(entries(second, "match")) == 5 and link(second, "next") is None
    assert {r["id"] for r in entries(first, "match") + entries(second, "match")} == ids
    seen = all_pages(client, "Endpoint")
    assert len(seen) == 25 and set(seen) == ids


# -- system search paging ----------------------------------------------------------------
def test_system_search_paging_across_types(client, repo):
    want = [("Patient", _create(repo, "Patient", make_patient(mrn=f"SY{i}"))) for i in range(7)]
    want += [("Endpoint", _create(repo, "Endpoint", make_endpoint(name=f"SY{i}"))) for i in range(5)]
    _create(repo, "ImagingStudy", make_imaging_study("Patient/sy"))  # not one of the requested types
    bundle = search(client, "?_type=Patient,Endpoint&_count=3")
    seen = []
    pages = 0
    while True:
        page = entries(bundle, "match")
        assert len(page) <= 3
        seen += [(r["resourceType"], r["id"]) for r in page]
        pages += 1
        assert pages < 20, "paging does not end"
        if not link(bundle, "next"):
            break
        bundle = follow(client, link(bundle, "next"))
    assert len(seen) == len(set(seen)), "a resource was returned twice"
    assert sorted(seen) == sorted(want)
