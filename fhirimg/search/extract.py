"""Index values of one resource: evaluate each parameter's expression, convert by type.

`extract_index_rows(resource)` returns {table kind: [row dicts]} ready for insertion;
the same conversion functions serve the query side (normalise_string, parse_reference).
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any

from . import registry
from .dates import BadDate, date_range, period_range
from .fhirpath import compile_expression

MAX_VALUE = 512  # longer values are cut: index entries stay bounded
SORT_OFFSET = 10 ** 15  # makes every ms value positive so that zero-padded strings sort numerically
CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}
_WS = re.compile(r"\s+")


def normalise_string(text: str) -> str:
    """Case- and accent-insensitive form (search.html#string): NFKD, no marks, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _WS.sub(" ", stripped.casefold()).strip()[:MAX_VALUE]


def extract_index_rows(resource: dict, use_fast_path: bool = True) -> dict[str, list[dict]]:
    res_type = resource["resourceType"]
    rows: dict[str, list[dict]] = {kind: [] for kind in ("token", "string", "reference", "date", "uri", "sort")}
    for param in registry.indexed_parameters(res_type):
        items = compile_expression(param.expression, use_fast_path)(resource)
        if not items:
            continue
        converted = distinct_rows(CONVERTERS[param.type](items))
        for row in converted:
            row["param"] = param.name
        rows[param.type].extend(converted)
        if param.is_sortable and param.type != "date" and converted:  # dates sort on search_date
            rows["sort"].append(dict(sort_keys(param.type, converted), param=param.name))
    return rows


def distinct_rows(rows: list[dict]) -> list[dict]:
    """Each row once: a study's instances mostly share one SOP class, and ten equal
    `dicom-class` rows find nothing one row does not (they were a third of its token rows)."""
    if len(rows) < 2:
        return rows
    seen: set = set()
    out = []
    for row in rows:
        key = tuple(row.values())
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _cut(value: Any) -> str:
    return str(value)[:MAX_VALUE]


def token_rows(items) -> list[dict]:
    out = []
    for value, _ in items:
        if isinstance(value, bool):
            out.append({"system": None, "code": "true" if value else "false", "text": None})
        elif isinstance(value, (str, int, float)):
            out.append({"system": None, "code": _cut(value), "text": None})
        elif isinstance(value, dict):
            out.extend(_token_rows_of_complex(value))
    return out


def _token_rows_of_complex(value: dict) -> list[dict]:
    if "coding" in value or ("text" in value and "code" not in value and "value" not in value):
        text = value.get("text")
        codings = [c for c in value.get("coding") or [] if isinstance(c, dict)]
        rows = [_coding_row(c, text) for c in codings if c.get("code")]
        if not rows and text:
            rows.append({"system": None, "code": "", "text": normalise_string(text)})
        return rows
    if "code" in value:
        return [_coding_row(value, None)]
    if value.get("value") is not None:  # Identifier or ContactPoint
        system = value.get("system")
        if system in CONTACT_SYSTEMS:
            system = None  # ContactPoint: the token is the value (search.html#token)
        type_text = (value.get("type") or {}).get("text") if isinstance(value.get("type"), dict) else None
        return [{"system": _cut(system) if system else None, "code": _cut(value["value"]),
                 "text": normalise_string(type_text) if type_text else None}]
    return []


def _coding_row(coding: dict, text: str | None) -> dict:
    label = text or coding.get("display")
    return {"system": _cut(coding["system"]) if coding.get("system") else None, "code": _cut(coding.get("code", "")),
            "text": normalise_string(label) if label else None}


HUMAN_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def string_rows(items) -> list[dict]:
    out = []
    for value, _ in items:
        texts: list[str] = []
        if isinstance(value, str):
            texts = [value]
        elif isinstance(value, dict):
            for part in HUMAN_NAME_PARTS + ADDRESS_PARTS:
                part_value = value.get(part)
                texts.extend(part_value if isinstance(part_value, list) else [part_value] if part_value else [])
        out.extend({"norm": normalise_string(t), "exact": _cut(t)} for t in texts if isinstance(t, str) and t)
    return out


_RELATIVE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?\Z")


def parse_reference(reference: str) -> tuple[str | None, str | None, str | None]:
    """(target_type, target_id, url): relative references give type and id, others a url."""
    match = _RELATIVE.match(reference)
    if match:
        return match["type"], match["id"], None
    if reference.startswith("#"):
        return None, None, None  # contained: nothing outside the resource to find
    return None, None, _cut(re.sub(r"/_history/[^/]+$", "", reference))


def reference_rows(items) -> list[dict]:
    out = []
    for value, _ in items:
        if isinstance(value, str):  # canonical (meta.profile) or uri
            out.append({"target_type": None, "target_id": None, "url": _cut(value),
                        "ident_system": None, "ident_value": None})
            continue
        if not isinstance(value, dict):
            continue
        if value.get("reference"):
            target_type, target_id, url = parse_reference(value["reference"])
            if target_type or url:
                out.append({"target_type": target_type, "target_id": target_id, "url": url,
                            "ident_system": None, "ident_value": None})
        ident = value.get("identifier")
        if isinstance(ident, dict) and ident.get("value"):
            out.append({"target_type": None, "target_id": None, "url": None,
                        "ident_system": _cut(ident["system"]) if ident.get("system") else None,
                        "ident_value": _cut(ident["value"])})
    return out


def date_rows(items) -> list[dict]:
    out = []
    for value, _ in items:
        try:
            span = date_range(value) if isinstance(value, str) else (
                period_range(value) if isinstance(value, dict) else None)
        except BadDate:
            span = None  # validation rejects bad dates before indexing; never fail a write here
        if span:
            out.append({"low_ms": span[0], "high_ms": span[1]})
    return out


def uri_rows(items) -> list[dict]:
    return [{"uri": _cut(v)} for v, _ in items if isinstance(v, str)]


CONVERTERS = {"token": token_rows, "string": string_rows, "reference": reference_rows,
              "date": date_rows, "uri": uri_rows}


def sort_keys(param_type: str, rows: list[dict]) -> dict:
    if param_type == "date":
        return {"asc_key": encode_ms(min(r["low_ms"] for r in rows)),
                "desc_key": encode_ms(max(r["high_ms"] for r in rows))}
    field = {"token": "code", "string": "norm", "uri": "uri"}[param_type]
    values = [r[field] for r in rows]
    return {"asc_key": min(values)[:128], "desc_key": max(values)[:128]}


def encode_ms(ms: int) -> str:
    return f"{ms + SORT_OFFSET:016d}"
