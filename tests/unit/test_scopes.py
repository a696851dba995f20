"""The SMART scope grammar (scopes-and-launch-context.html), v2 and the v1 mapping."""
from __future__ import annotations

import itertools

import pytest

from fhirimg.auth.scopes import LETTERS, Scope, ScopeError, grant, intersect, is_ordered_subset, parse_scope, \
    parse_scopes


@pytest.mark.parametrize("text, context, res_type, permissions", [
    ("patient/Observation.rs", "patient", "Observation", "rs"),
    ("user/*.cruds", "user", "*", "cruds"),
    ("system/ImagingStudy.s", "system", "ImagingStudy", "s"),
    ("system/Task.cu", "system", "Task", "cu"),
    ("patient/*.r", "patient", "*", "r"),
])
def test_v2_scopes_parse(text, context, res_type, permissions):
    assert parse_scope(text) == Scope(context, res_type, permissions)


@pytest.mark.parametrize("v1, letters", [("read", "rs"), ("write", "cud"), ("*", "cruds")])
def test_v1_scopes_map_to_v2_letters(v1, letters):
    assert parse_scope(f"user/Patient.{v1}").permissions == letters
    assert parse_scope(f"system/*.{v1}").permissions == letters


def test_every_in_order_subset_of_cruds_is_accepted_and_nothing_else():
    for size in range(1, 6):
        for combination in itertools.permutations(LETTERS, size):
            text = "".join(combination)
            ordered = "".join(sorted(text, key=LETTERS.index)) == text
            assert is_ordered_subset(text) == ordered, text
    assert not is_ordered_subset("")
    assert not is_ordered_subset("rr")
    assert not is_ordered_subset("x")


@pytest.mark.parametrize("text", [
    "patient/Observation.dus",      # out of order
    "patient/Observation.rr",       # repeated
    "patient/Observation.",         # no letters
    "patient/Observation.readx",    # not a v1 word
    "practitioner/Patient.rs",      # unknown context
    "patient/observation.rs",       # a type starts upper-case
    "patient/Observation",          # no permissions
    "patient/Observation.rs?",      # '?' with nothing after
    "patient/Observation.rs?category",  # a criterion without a value
    "patient/Observation.read?category=x",  # v1 scopes take no criteria
    "system/*.rs" + "x" * 600,     # too long
])
def test_malformed_scopes_are_refused(text):
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_granular_criteria_are_parsed_and_url_decoded():
    scope = parse_scope("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/"
                        "observation-category%7Claboratory&status=final")
    assert scope.criteria == (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),
                              ("status", "final"))
    assert scope.grants("r", "Observation") and scope.grants("s", "Observation")
    assert not scope.grants("c", "Observation") and not scope.grants("r", "Patient")


def test_a_scope_string_keeps_malformed_scopes_aside_and_never_widens():
    scopes = parse_scopes("openid fhirUser launch/patient system/ImagingStudy.dus system/Patient.rs bogus")
    assert scopes.other == ["openid", "fhirUser", "launch/patient"]
    assert [s.text() for s in scopes.scopes] == ["system/Patient.rs"]
    assert [word for word, _ in scopes.rejected] == ["system/ImagingStudy.dus", "bogus"]
    assert scopes.granting("r", "ImagingStudy") == []


def test_wildcard_type_grants_every_type():
    scopes = parse_scopes("system/*.rs")
    assert scopes.granting("r", "Task") and scopes.granting("s", "Endpoint")
    assert not scopes.granting("c", "Task")


def test_search_without_read_grants_search_only():
    scopes = parse_scopes("system/ImagingStudy.s")
    assert scopes.granting("s", "ImagingStudy") and not scopes.granting("r", "ImagingStudy")


def test_intersection_takes_the_narrower_type_common_letters_and_both_criteria():
    asked = parse_scope("system/*.cruds")
    allowed = parse_scope("system/ImagingStudy.rs?modality=CT")
    assert intersect(asked, allowed) == Scope("system", "ImagingStudy", "rs", (("modality", "CT"),))
    assert intersect(parse_scope("system/Patient.r"), parse_scope("system/ImagingStudy.r")) is None
    assert intersect(parse_scope("user/*.r"), parse_scope("system/*.r")) is None  # contexts never mix
    assert intersect(parse_scope("system/Patient.c"), parse_scope("system/Patient.rs")) is None


def test_grant_gives_only_what_was_both_asked_and_allowed():
    granted = grant(parse_scopes("system/*.rs system/Task.cu openid"), parse_scopes("system/ImagingStudy.rs system/Task.c"))
    assert [s.text() for s in granted.scopes] == ["system/ImagingStudy.rs", "system/Task.c"]
    assert granted.other == []  # openid was not allowed
    assert grant(parse_scopes("system/Patient.d"), parse_scopes("system/Patient.rs")).scopes == []


def test_too_many_scopes_are_refused_past_the_limit():
    many = " ".join(f"system/Patient.r?_id=p{i}" for i in range(150))
    scopes = parse_scopes(many)
    assert len(scopes.scopes) == 100 and len(scopes.rejected) == 50
