"""A Subscription's filterBy, evaluated on one version's content with search semantics.

A filter names a search parameter the topic declares in canFilterBy; its value is read as
that parameter's search value (token ``system|code``, ``code``, ``|code``, ``system|``;
reference ``Type/id``, ``id`` or an absolute URL; comma = any of). Every filter must match
(R5 Subscription.filterBy). Values are extracted from the version with the search index's
own expressions and conversions, so a filter finds what the equivalent search would.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from ..search import registry
from ..search.criteria import split_values
from ..search.extract import CONVERTERS, parse_reference
from ..search.fhirpath import compile_expression


@dataclass(frozen=True)
class Filter:
    parameter: str
    values: tuple[str, ...]  # any of


def filters_of(subscription: dict) -> list[Filter]:
    out = []
    for item in subscription.get("filterBy") or []:
        value = item.get("value") or ""
        out.append(Filter(item.get("filterParameter") or "", tuple(v for v in split_values(value) if v)))
    return out


def matches(res_type: str, res_id: str, resource: dict, filters: list[Filter]) -> bool:
    return all(matches_one(res_type, res_id, resource, f) for f in filters)


def matches_one(res_type: str, res_id: str, resource: dict, flt: Filter) -> bool:
    if flt.parameter == "_id":
        return res_id in flt.values
    rows = rows_of(res_type, flt.parameter, resource)
    param = registry.parameter(res_type, flt.parameter)
    if param is None:
        return False
    test = TESTS.get(param.type)
    return test is not None and any(test(row, value) for row in rows for value in flt.values)


def rows_of(res_type: str, name: str, resource: dict) -> list[dict]:
    evaluate = _evaluator(res_type, name)
    if evaluate is None:
        return []
    param = registry.parameter(res_type, name)
    return CONVERTERS[param.type](evaluate(resource))


@lru_cache(maxsize=256)
def _evaluator(res_type: str, name: str):
    param = registry.parameter(res_type, name)
    if param is None or not param.expression or param.type not in CONVERTERS:
        return None
    return compile_expression(param.expression)


def token_matches(row: dict, value: str) -> bool:
    if "|" not in value:
        return row.get("code") == value
    system, code = value.split("|", 1)
    if not system:
        return row.get("system") is None and row.get("code") == code
    if not code:
        return row.get("system") == system
    return row.get("system") == system and row.get("code") == code


def reference_matches(row: dict, value: str) -> bool:
    target_type, target_id, url = parse_reference(value)
    if target_type:
        return row.get("target_type") == target_type and row.get("target_id") == target_id
    if url and "/" not in value:  # a bare id
        return row.get("target_id") == value
    return url is not None and row.get("url") == url


def string_matches(row: dict, value: str) -> bool:
    from ..search.extract import normalise_string
    return (row.get("norm") or "").startswith(normalise_string(value))


def uri_matches(row: dict, value: str) -> bool:
    return row.get("uri") == value


TESTS = {"token": token_matches, "reference": reference_matches, "string": string_matches, "uri": uri_matches}
