"""Index extraction: the fast FHIRPath subset gives exactly what fhirpathpy gives."""
from __future__ import annotations

from datetime import UTC

import pytest

from fhirimg.search.dates import date_range
from fhirimg.search.extract import extract_index_rows, normalise_string

from ..factories import make_endpoint, make_imaging_study, make_patient


def rich_task():
    return {"resourceType": "Task", "status": "requested", "intent": "order", "priority": "routine",
            "identifier": [{"system": "urn:x", "value": "t1"}], "for": {"reference": "Patient/p1"},
            "focus": {"reference": "ImagingStudy/s1"}, "authoredOn": "2026-01-02T03:04:05Z",
            "executionPeriod": {"start": "2026-01-02"}, "code": {"coding": [{"system": "urn:c", "code": "fetch"}]},
            "output": [{"type": {"text": "study"}, "valueReference": {"reference": "ImagingStudy/s2"}}]}


@pytest.mark.parametrize("resource", [
    make_imaging_study(series=3, instances=4, endpoint=[{"reference": "Endpoint/e1"}],
                       referrer={"reference": "Practitioner/d1"}),
    make_patient(family="Zoë", deceasedDateTime="2020-02-02", telecom=[{"system": "email", "value": "a@b.c"}],
                 address=[{"city": "Genève", "line": ["1 rue"]}]),
    make_patient(deceasedBoolean=False),
    make_patient(deceasedBoolean=True),
    make_patient(),
    make_endpoint(identifier=[{"system": "urn:e", "value": "pacs-1"}]),
    rich_task(),
], ids=["study", "patient-dead", "patient-alive", "patient-deceased-true", "patient-deceased-absent", "endpoint",
        "task"])
def test_fast_path_equals_fhirpathpy(resource):
    assert extract_index_rows(resource, use_fast_path=True) == extract_index_rows(resource, use_fast_path=False)


def test_patient_index_values():
    rows = extract_index_rows(make_patient(mrn="42", family="Müller", deceasedBoolean=True))
    tokens = {(r["param"], r["code"]) for r in rows["token"]}
    assert ("identifier", "42") in tokens and ("deceased", "true") in tokens and ("gender", "female") in tokens
    assert {"param": "family", "norm": "muller", "exact": "Müller"} in rows["string"]


def test_string_normalisation_folds_case_and_accents():
    assert normalise_string("  ÉLodie  Straße ") == "elodie strasse"


@pytest.mark.parametrize("text,low,high", [
    ("2025", "2025-01-01T00:00:00.000", "2025-12-31T23:59:59.999"),
    ("2024-02", "2024-02-01T00:00:00.000", "2024-02-29T23:59:59.999"),
    ("2025-03-01", "2025-03-01T00:00:00.000", "2025-03-01T23:59:59.999"),
    ("2025-03-01T10:15", "2025-03-01T10:15:00.000", "2025-03-01T10:15:59.999"),
    ("2025-03-01T10:15:30+02:00", "2025-03-01T08:15:30.000", "2025-03-01T08:15:30.999"),
    ("2025-03-01T10:15:30.25Z", "2025-03-01T10:15:30.250", "2025-03-01T10:15:30.259"),
])
def test_date_precision_ranges(text, low, high):
    from datetime import datetime

    def ms(s):
        return int(datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp() * 1000)
    assert date_range(text) == (ms(low), ms(high))
