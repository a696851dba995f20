"""Bounds on what one request may ask, checked before any work (issue 15: a 600 KB search of
200 000 values took 108 s and 1.5 GB; a 300-level extension crashed validation; a NUL byte
reached PostgreSQL's text columns). Each refusal is a 400 naming the limit and where."""
from __future__ import annotations

from .errors import FhirError, Invalid

MAX_PARAMETERS = 100  # name=value pairs in one search or condition
MAX_VALUES_PER_PARAMETER = 100  # comma-separated alternatives of one parameter
MAX_VALUES = 1000  # all alternatives of all parameters together
MAX_VALUE_LENGTH = 2048  # characters of one value (a _source:above of 20 000 "/" took 7 s)
MAX_SORT_KEYS = 8
MAX_JSON_DEPTH = 64  # FHIR resources nest far less; fhir.resources recursed out at ~300


class TooCostly(FhirError):
    def __init__(self, diagnostics: str, expression: list[str] | None = None):
        super().__init__(400, "too-costly", diagnostics, expression)


def check_search_parameters(params: list[tuple[str, str]]) -> None:
    """Counts, lengths and NUL of a search's or a condition's parameters."""
    if len(params) > MAX_PARAMETERS:
        raise TooCostly(f"{len(params)} search parameters; at most {MAX_PARAMETERS} in one request")
    total = 0
    for name, value in params:
        if "\x00" in name or "\x00" in value:
            raise Invalid(f"search parameter {name[:64]!r} contains a NUL character", [name[:64]])
        if len(value) > MAX_VALUE_LENGTH:
            raise TooCostly(f"{name}: a value of {len(value)} characters; at most {MAX_VALUE_LENGTH}", [name])
        values = value.count(",") + 1
        if values > MAX_VALUES_PER_PARAMETER:
            raise TooCostly(f"{name}: {values} values; at most {MAX_VALUES_PER_PARAMETER} in one parameter", [name])
        total += values
    if total > MAX_VALUES:
        raise TooCostly(f"{total} search values in all; at most {MAX_VALUES} in one request")


def check_json_structure(document) -> None:
    """Depth at most MAX_JSON_DEPTH and no NUL in any string or key (FHIR strings may not hold
    one, and PostgreSQL's text cannot), anywhere in a request body. Run when the raw body
    holds an escaped NUL; resources get the same checks in resources.find_empty_values."""
    stack = [(document, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise Invalid(f"the document nests deeper than {MAX_JSON_DEPTH} levels (at {path[:200]})",
                          [path[:200]] if path else None, code="structure")
        if isinstance(node, dict):
            children = ((f"{path}.{key}".lstrip("."), key, value) for key, value in node.items())
        elif isinstance(node, list):
            children = ((f"{path}[{index}]", "", value) for index, value in enumerate(node))
        else:  # a bare scalar document: validation says what is wrong with it
            continue
        for where, key, value in children:
            if "\x00" in key:
                raise Invalid("a property name contains a NUL character", [path[:200]], code="structure")
            if isinstance(value, str):
                if "\x00" in value:
                    raise Invalid("a string contains a NUL character", [where[:200]])
            elif isinstance(value, (dict, list)):
                stack.append((value, depth + 1, where))
