"""Each parameter type's semantics (search.html), on SQLite and PostgreSQL.

Expected ids are computed in Python from the resources the test created, not from the index.
"""
from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ..api.outcomes import assert_outcome
from ..factories import DCM, make_endpoint, make_imaging_study, make_patient
from .helpers import match_ids, search

STARTS = ["2024-12-31T23:59:59Z", "2025-01-01T00:00:00Z", "2025-01-01T12:00:00Z", "2025-01-02T00:00:00Z",
          "2025-06-15", "2025-03", "2026-01-01T00:00:00+05:00"]


@pytest.fixture
def studies(repo):
    """Studies with varied modality, started, subject, status and tags."""
    patient = repo.create("Patient", make_patient(mrn="P-1", family="Ångström")).res_id
    other = repo.create("Patient", make_patient(mrn="P-2", family="Angstrom-Lee")).res_id
    made = {}
    for i, started in enumerate(STARTS):
        subject = patient if i % 2 == 0 else other
        modality = ["CT", "MR", "US"][i % 3]
        meta = {"tag": [{"system": "urn:tags", "code": f"t{i % 2}"}], "source": f"http://src.example/feed/{i % 3}"}
        study = make_imaging_study(f"Patient/{subject}", modality=modality, started=started, meta=meta,
                                   status="available" if i != 3 else "registered")
        stored = repo.create("ImagingStudy", study)
        made[stored.res_id] = {**study, "id": stored.res_id}
    return {"patient": patient, "other": other, "studies": made}


def ids_where(studies, predicate):
    return {i for i, s in studies["studies"].items() if predicate(s)}


def modalities(study):
    return {c["code"] for s in study["series"] for c in s["modality"]["coding"]}


# -- token -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["CT", f"{DCM}|CT", f"{DCM}|"])
def test_token_code_system_forms(client, studies, value):
    want = ids_where(studies, lambda s: "CT" in modalities(s)) if value != f"{DCM}|" else set(studies["studies"])
    assert match_ids(search(client, f"ImagingStudy?modality={value}")) == want


def test_token_without_system_form_matches_only_codes_without_system(client, studies):
    assert match_ids(search(client, "ImagingStudy?modality=|CT")) == set()
    assert match_ids(search(client, "ImagingStudy?status=|available")) == ids_where(
        studies, lambda s: s["status"] == "available")


def test_token_comma_is_or_and_repeat_is_and(client, studies):
    either = ids_where(studies, lambda s: modalities(s) & {"CT", "MR"})
    assert match_ids(search(client, "ImagingStudy?modality=CT,MR")) == either
    both = ids_where(studies, lambda s: "CT" in modalities(s) and s["status"] == "available")
    assert match_ids(search(client, "ImagingStudy?modality=CT&status=available")) == both


def test_token_not_and_missing(client, studies, repo):
    assert match_ids(search(client, "ImagingStudy?modality:not=CT")) == ids_where(
        studies, lambda s: "CT" not in modalities(s))
    bare = repo.create("ImagingStudy", {"resourceType": "ImagingStudy", "status": "available",
                                        "subject": {"reference": f"Patient/{studies['patient']}"}}).res_id
    assert match_ids(search(client, "ImagingStudy?modality:missing=true")) == {bare}
    assert match_ids(search(client, "ImagingStudy?modality:missing=false")) == set(studies["studies"])


def test_identifier_as_clients_send_study_uids(client, studies):
    sid, study = next(iter(studies["studies"].items()))
    uid = study["identifier"][0]["value"]
    assert match_ids(search(client, f"ImagingStudy?identifier=urn:dicom:uid|{uid}")) == {sid}
    series_uid = study["series"][0]["uid"]
    assert match_ids(search(client, f"ImagingStudy?series={series_uid}")) == {sid}


def test_token_text_modifier_on_codeable_concept(client, repo):
    ep = make_endpoint(payloadType=None)
    ep.pop("payloadType")
    ep["payload"] = [{"type": [{"text": "DICOM images", "coding": [{"system": "urn:p", "code": "dcm"}]}]}]
    eid = repo.create("Endpoint", ep).res_id
    assert match_ids(search(client, "Endpoint?payload-type:text=dicom")) == {eid}
    assert match_ids(search(client, "Endpoint?payload-type:text=images")) == set()


def test_id_parameter(client, studies):
    some = sorted(studies["studies"])[:2]
    assert match_ids(search(client, f"ImagingStudy?_id={','.join(some)}")) == set(some)


# -- string ----------------------------------------------------------------------------
def test_string_is_case_and_accent_insensitive_prefix(client, studies):
    both = {studies["patient"], studies["other"]}
    assert match_ids(search(client, "Patient?family=angstr")) == both
    assert match_ids(search(client, "Patient?name=ANGSTROM")) == both
    assert match_ids(search(client, "Patient?family=ngstr")) == set()


def test_string_exact_and_contains(client, studies):
    assert match_ids(search(client, "Patient?family:exact=Ångström")) == {studies["patient"]}
    assert match_ids(search(client, "Patient?family:exact=ångström")) == set()
    assert match_ids(search(client, "Patient?family:contains=lee")) == {studies["other"]}


# -- reference -------------------------------------------------------------------------
def test_reference_forms(client, studies):
    pid = studies["patient"]
    want = ids_where(studies, lambda s: s["subject"]["reference"] == f"Patient/{pid}")
    for value in (pid, f"Patient/{pid}", f"http://localhost/fhir/Patient/{pid}"):
        assert match_ids(search(client, f"ImagingStudy?subject={value}")) == want, value
    assert match_ids(search(client, f"ImagingStudy?patient={pid}")) == want
    assert match_ids(search(client, f"ImagingStudy?subject:Patient={pid}")) == want
    assert match_ids(search(client, f"ImagingStudy?subject:Group={pid}")) == set()


def test_reference_identifier_and_missing(client, repo, studies):
    logical = make_imaging_study("Patient/x", referrer={"identifier": {"system": "urn:npi", "value": "77"}})
    sid = repo.create("ImagingStudy", logical).res_id
    assert match_ids(search(client, "ImagingStudy?referrer:identifier=urn:npi|77")) == {sid}
    assert match_ids(search(client, "ImagingStudy?referrer:missing=false")) == {sid}


# -- date ------------------------------------------------------------------------------
def ms(text):
    from fhirimg.search.dates import date_range
    return date_range(text)


def spec_date_match(prefix, value, started):
    """search.html#prefix written out independently of the query builder."""
    vl, vh = ms(value)
    rl, rh = ms(started)
    contains = vl <= rl and rh <= vh
    return {"eq": contains, "ne": not contains, "gt": rh > vh, "lt": rl < vl,
            "ge": rh > vh or contains, "le": rl < vl or contains, "sa": rl > vh, "eb": rh < vl}[prefix]


@pytest.mark.parametrize("value", ["2025-01-01", "2025", "2025-01-01T12:00", "2025-03"])
def test_date_prefixes_follow_the_range_rules(client, studies, value):
    for prefix in ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]:
        want = ids_where(studies, lambda s, p=prefix: spec_date_match(p, value, s["started"]))
        assert match_ids(search(client, f"ImagingStudy?started={prefix}{value}")) == want, prefix


def test_date_ap_is_approximate(client, studies):
    got = match_ids(search(client, "ImagingStudy?started=ap2025-01-01"))
    assert ids_where(studies, lambda s: s["started"].startswith("2025-01-01")) <= got


def test_last_updated_for_incremental_sync(client, repo, studies):
    before = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z"
    import time
    time.sleep(0.01)
    late = repo.create("ImagingStudy", make_imaging_study(f"Patient/{studies['patient']}")).res_id
    query = f"ImagingStudy?patient={studies['patient']}&_lastUpdated=gt{before}"
    assert match_ids(search(client, query.replace("+", "%2B"))) == {late}


# -- uri and common meta parameters ----------------------------------------------------
def test_uri_source_exact_below_above(client, studies):
    want0 = ids_where(studies, lambda s: s["meta"]["source"].endswith("/0"))
    assert match_ids(search(client, "ImagingStudy?_source=http://src.example/feed/0")) == want0
    assert match_ids(search(client, "ImagingStudy?_source:below=http://src.example/feed")) == set(studies["studies"])
    assert match_ids(search(client, "ImagingStudy?_source:above=http://src.example/feed/0/x")) == want0


def test_tag(client, studies):
    want = ids_where(studies, lambda s: s["meta"]["tag"][0]["code"] == "t1")
    assert match_ids(search(client, "ImagingStudy?_tag=urn:tags|t1")) == want


# -- errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("query,param", [
    ("ImagingStudy?started=2025-13-01", "started"),
    ("ImagingStudy?started=xx2025", "started"),
    ("ImagingStudy?modality:exact=CT", "modality:exact"),
    ("ImagingStudy?subject:missing=maybe", "subject:missing"),
    ("ImagingStudy?_sort=instance-count", "_sort"),
    ("ImagingStudy?_count=-1", "_count"),
    ("ImagingStudy?_include=ImagingStudy:nothing", "_include"),
    ("ImagingStudy?status.name=x", "status.name"),
])
def test_bad_values_are_400_naming_the_parameter(client, studies, query, param):
    assert_outcome(client.get(f"/fhir/{query}"), 400, expression=param)


def test_unknown_parameter_lenient_is_reported_and_not_echoed(client, studies):
    bundle = search(client, "ImagingStudy?modality=CT&colour=blue")
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert all("colour" not in lk["url"] for lk in bundle["link"])
    assert match_ids(bundle) == ids_where(studies, lambda s: "CT" in modalities(s))


def test_unknown_parameter_strict_is_400(client, studies):
    response = client.get("/fhir/ImagingStudy?colour=blue", headers={"Prefer": "handling=strict"})
    assert_outcome(response, 400, expression="colour")


def test_profile_security_and_id_not(client, repo):
    profile = "http://example.org/StructureDefinition/imaging-study-x"
    labelled = make_imaging_study("Patient/p", meta={"profile": [profile], "security": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]})
    lid = repo.create("ImagingStudy", labelled).res_id
    plain = repo.create("ImagingStudy", make_imaging_study("Patient/p")).res_id
    assert match_ids(search(client, f"ImagingStudy?_profile={profile}")) == {lid}
    assert match_ids(search(client, "ImagingStudy?_security=http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R")) == {lid}
    assert match_ids(search(client, f"ImagingStudy?_id:not={lid}")) == {plain}
    assert match_ids(search(client, "ImagingStudy?started:missing=false")) == {lid, plain}


def test_deleted_resources_are_not_found(client, repo):
    sid = repo.create("ImagingStudy", make_imaging_study("Patient/p", modality="NM")).res_id
    assert match_ids(search(client, "ImagingStudy?modality=NM")) == {sid}
    repo.delete("ImagingStudy", sid)
    assert match_ids(search(client, "ImagingStudy?modality=NM")) == set()
    assert match_ids(search(client, "ImagingStudy?modality:not=CT")) == set()


def test_an_update_reindexes(client, repo):
    stored = repo.create("ImagingStudy", make_imaging_study("Patient/p", modality="NM"))
    changed = make_imaging_study("Patient/p", modality="PT")
    repo.update("ImagingStudy", stored.res_id, {**changed, "id": stored.res_id})
    assert match_ids(search(client, "ImagingStudy?modality=NM")) == set()
    assert match_ids(search(client, "ImagingStudy?modality=PT")) == {stored.res_id}
