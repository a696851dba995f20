"""parse_criteria: the search criteria of conditional operations (http.html#cond-update)."""
from __future__ import annotations

import pytest

from fhirimg.errors import Invalid
from fhirimg.interactions import parse_criteria

MRN = [("identifier", "http://hospital.example.org/mrn|123")]


@pytest.mark.parametrize("query", [
    "identifier=http://hospital.example.org/mrn|123",
    "identifier=http%3A%2F%2Fhospital.example.org%2Fmrn%7C123",
    "?identifier=http://hospital.example.org/mrn|123",
    "Patient?identifier=http://hospital.example.org/mrn|123",
    "https://fhir.example.org/fhir/Patient?identifier=http://hospital.example.org/mrn|123",
    "identifier=http://hospital.example.org/mrn|123&_format=json&_pretty=true",
])
def test_criteria_whose_value_is_a_url_are_parsed_in_every_form(query):
    assert parse_criteria(query) == MRN


def test_several_criteria_keep_their_order():
    assert parse_criteria("_id=a,b&identifier=x") == [("_id", "a,b"), ("identifier", "x")]


def test_a_criterion_without_value_is_invalid_and_named():
    with pytest.raises(Invalid) as caught:
        parse_criteria("identifier=")
    assert caught.value.issues[0].expression == ["identifier"]
