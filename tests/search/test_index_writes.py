"""The write-side shortcuts of the index: one-statement inserts on PostgreSQL, the plain token lookup.

Each is checked against what the general code gives for the same input, on both backends.
"""
from __future__ import annotations

import pytest
from sqlalchemy import select

from fhirimg.search.extract import extract_index_rows
from fhirimg.search.index import find_ids, plain_token_criterion
from fhirimg.search.query import SearchRequest, matching_ids
from fhirimg.search.tables import TABLES

MRN = "http://hospital.example.org/mrn"


def study(uid: str, **extra) -> dict:
    return {"resourceType": "ImagingStudy", "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"},
                           {"system": "http://acc.example.org", "value": "ACC-1", "type": {"text": "accession"}}],
            "subject": {"reference": "Patient/p1", "display": "Müller, Jörg"}, "started": "2026-03-01T10:15:00+01:00",
            "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
            "description": "CT Thorax ÄÖÜ", "numberOfSeries": 1, "numberOfInstances": 2,
            "series": [{"uid": f"{uid}.1", "number": 1, "modality": {"coding": [
                {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]},
                "bodySite": {"concept": {"coding": [{"system": "http://snomed.info/sct", "code": "51185008"}]}},
                "instance": [{"uid": f"{uid}.1.{n}", "sopClass": {"system": "urn:ietf:rfc:3986",
                                                                  "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}}
                             for n in (1, 2)]}], **extra}


def stored_rows(engine, res_type: str, res_id: str) -> dict[str, list[tuple]]:
    out = {}
    with engine.connect() as conn:
        for kind, table in TABLES.items():
            columns = [c for c in table.columns if c.name not in ("res_type", "res_id")]
            rows = conn.execute(select(*columns).where(table.c.res_type == res_type, table.c.res_id == res_id))
            out[kind] = sorted(tuple(row) for row in rows)
    return out


def expected_rows(resource: dict) -> dict[str, list[tuple]]:
    out = {}
    for kind, rows in extract_index_rows(resource).items():
        columns = [c.name for c in TABLES[kind].columns if c.name not in ("res_type", "res_id")]
        out[kind] = sorted(tuple(row.get(name) for name in columns) for row in rows)
    return out


def test_index_rows_written_are_the_extracted_rows_on_create_update_and_delete(engine, repo):
    resource = study("1.2.3.4")
    with repo.transaction() as uow:
        created = uow.create("ImagingStudy", resource)
    rows = stored_rows(engine, "ImagingStudy", created.res_id)
    assert rows == expected_rows(created.resource)
    assert sum(len(r) for r in rows.values()) > 15 and all(rows[k] for k in ("token", "reference", "date"))
    changed = dict(created.resource, description="other", modality=[{"code": "MR"}])
    with repo.transaction() as uow:
        updated = uow.update("ImagingStudy", created.res_id, changed)
    assert stored_rows(engine, "ImagingStudy", created.res_id) == expected_rows(updated.resource)
    with repo.transaction() as uow:
        uow.delete("ImagingStudy", created.res_id)
    assert all(not rows for rows in stored_rows(engine, "ImagingStudy", created.res_id).values())


def general_ids(engine, res_type: str, criteria) -> list[str]:
    with engine.connect() as conn:
        return matching_ids(conn, SearchRequest.parse(res_type, criteria, strict=True), 1000)


def test_plain_token_lookup_finds_what_the_general_query_finds(engine, repo):
    with repo.transaction() as uow:
        ids = {}
        for name, identifier in [("a", {"system": MRN, "value": "123"}), ("b", {"system": MRN, "value": "123"}),
                                 ("c", {"system": MRN, "value": "1234"}), ("d", {"value": "123"}),
                                 ("e", {"system": MRN + "/other", "value": "123"}),
                                 ("f", {"system": MRN, "value": "ABC"}), ("gone", {"system": MRN, "value": "123"})]:
            ids[name] = uow.create("Patient", {"resourceType": "Patient", "identifier": [identifier]}).res_id
    with repo.transaction() as uow:
        uow.delete("Patient", ids["gone"])
    for value, expected in [(f"{MRN}|123", {"a", "b"}), (f"{MRN}|1234", {"c"}), (f"{MRN}|abc", set()),
                            (f"{MRN}|ABC", {"f"}), (f"{MRN}/other|123", {"e"}), ("urn:x|123", set())]:
        criteria = [("identifier", value)]
        assert plain_token_criterion("Patient", criteria) is not None
        with engine.connect() as conn:
            fast = find_ids(conn, "Patient", criteria)
        assert fast == general_ids(engine, "Patient", criteria) == sorted(ids[n] for n in expected), value


@pytest.mark.parametrize("criteria", [
    [("identifier", "123")], [("identifier", "|123")], [("identifier", f"{MRN}|")],
    [("identifier", f"{MRN}|1,{MRN}|2")], [("identifier:not", f"{MRN}|1")], [("identifier", f"{MRN}|a\\,b")],
    [("_id", "x|y")], [("name", "a|b")], [("identifier", f"{MRN}|1"), ("gender", "other")]])
def test_other_criteria_take_the_general_path(criteria):
    assert plain_token_criterion("Patient", criteria) is None


def test_several_searches_at_once_find_what_each_finds_alone(engine, repo):
    from fhirimg.search.index import find_ids_many
    with repo.transaction() as uow:
        p1 = uow.create("Patient", {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "1"}],
                                    "gender": "other"}).res_id
        p2 = uow.create("Patient", {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "1"}]}).res_id
        e1 = uow.create("Endpoint", {"resourceType": "Endpoint", "status": "active", "address": "https://x",
                                     "identifier": [{"system": MRN, "value": "1"}],
                                     "connectionType": [{"code": "dicom-wado-rs"}]}).res_id
    searches = [("Patient", [("identifier", f"{MRN}|1")]), ("Endpoint", [("identifier", f"{MRN}|1")]),
                ("Patient", [("identifier", f"{MRN}|2")]), ("Patient", [("gender", "other")]),
                ("ImagingStudy", [("identifier", f"{MRN}|1")])]
    with engine.connect() as conn:
        together = find_ids_many(conn, searches)
        alone = [find_ids(conn, res_type, criteria) for res_type, criteria in searches]
        capped = find_ids_many(conn, searches[:2], limit=1)
    assert together == alone == [sorted([p1, p2]), [e1], [], [p1], []]
    assert capped == [[min(p1, p2)], [e1]]
