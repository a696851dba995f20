"""_summary and _elements (search.html#summary, #elements): which elements a result keeps.

A shaped resource carries the SUBSETTED tag, so that nobody mistakes it for the full
resource and writes it back.
"""
from __future__ import annotations

from functools import cache

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "subsetted"}
ALWAYS = ("resourceType", "id", "meta")


@cache
def _element_sets(res_type: str) -> tuple[frozenset, frozenset]:
    """(summary elements, mandatory elements) of a type, from the fhir.resources model."""
    from fhir.resources import get_fhir_model_class
    summary, mandatory = set(), set()
    for name, info in get_fhir_model_class(res_type).model_fields.items():
        extra = info.json_schema_extra or {}
        if name.endswith("__ext") or not isinstance(extra, dict):
            continue
        key = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        if info.is_required() or extra.get("element_required"):
            mandatory.add(key)
    return frozenset(summary), frozenset(mandatory)


def shape_resource(resource: dict, summary: str | None, elements: list[str] | None) -> dict:
    if summary in (None, "false") and not elements:
        return resource
    summary_set, mandatory = _element_sets(resource["resourceType"])
    if summary == "true":
        keep = summary_set | set(ALWAYS)
    elif summary == "text":
        keep = set(ALWAYS) | {"text"} | mandatory
    elif summary == "data":
        keep = set(resource) - {"text"}
    else:
        keep = set(ALWAYS) | mandatory | {e.split(".", 1)[0] for e in elements or []}
    shaped = {k: v for k, v in resource.items() if k in keep or _is_choice_of(k, keep)}
    meta = dict(shaped.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED]
    shaped["meta"] = meta
    return {"resourceType": resource["resourceType"], **{k: v for k, v in shaped.items() if k != "resourceType"}}


def _is_choice_of(key: str, keep: set) -> bool:
    # `deceased` in _elements keeps deceasedBoolean / deceasedDateTime
    return any(key.startswith(k) and len(key) > len(k) and key[len(k)].isupper() for k in keep)
