"""The search parameters this server supports, per resource type.

One registry feeds the index extraction, the query builder and the CapabilityStatement,
so what is advertised is exactly what works. The definitions (name, type, FHIRPath
expression, targets, canonical url) are the FHIR R5 ones, kept as data in
``parameters.json`` beside this module; fhir.resources ships no SearchParameter data.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..resources import SUPPORTED_TYPES

DATA_FILE = Path(__file__).with_name("parameters.json")

# search.html#modifiers: the modifiers this server implements per parameter type.
MODIFIERS = {
    "token": {"missing", "not", "text"},
    "string": {"missing", "exact", "contains"},
    "reference": {"missing", "identifier"},  # plus a resource type, and chaining
    "date": {"missing"},
    "uri": {"missing", "above", "below"},
    "special": set(),
}
# Parameters evaluated on storage columns rather than on index tables.
COLUMN_PARAMETERS = {"_id", "_lastUpdated"}
SORTABLE_TYPES = {"token", "string", "date", "uri"}
# Per-series and per-instance UIDs/classes give a study no meaningful order, and would cost
# a sort row per study each; _sort on them is refused (400) rather than done badly.
UNSORTABLE_EXPRESSIONS = ("ImagingStudy.series.uid", "ImagingStudy.series.instance.uid",
                          "ImagingStudy.series.instance.sopClass")


@dataclass(frozen=True)
class SearchParameter:
    name: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    expression: str | None
    documentation: str
    targets: tuple[str, ...] = field(default=())
    definition: str | None = None
    processing_mode: str = "normal"

    @property
    def is_indexed(self) -> bool:
        """False for parameters the specification gives no expression (e.g. ImagingStudy reason)."""
        return self.expression is not None and self.name not in COLUMN_PARAMETERS

    @property
    def is_sortable(self) -> bool:
        return self.name in COLUMN_PARAMETERS or (self.is_indexed and self.type in SORTABLE_TYPES
                                                  and self.expression not in UNSORTABLE_EXPRESSIONS)


def _from_json(entry: dict, res_type: str | None) -> SearchParameter:
    expression = entry.get("expression")
    if expression and res_type:
        expression = expression.replace("Resource.", f"{res_type}.")
    documentation = entry["description"]
    if expression is None and entry["type"] != "special":
        documentation += (" (the R5 definition has no FHIRPath expression, so this server indexes "
                          "nothing for it: searching by it matches nothing)")
    if entry.get("processingMode") == "phonetic":
        documentation += " (matched as a normalised string prefix; no phonetic algorithm)"
    return SearchParameter(entry["code"], entry["type"], expression, documentation,
                           tuple(entry.get("target", ())), entry["url"],
                           entry.get("processingMode", "normal"))


@cache
def _load() -> dict[str, dict[str, SearchParameter]]:
    data = json.loads(DATA_FILE.read_text())
    out: dict[str, dict[str, SearchParameter]] = {}
    for res_type in SUPPORTED_TYPES:
        params = {e["code"]: _from_json(e, res_type) for e in data["common"]}
        for entry in data["resources"].get(res_type, []):
            params[entry["code"]] = _from_json(entry, res_type)
        out[res_type] = params
    return out


def parameters_for(res_type: str) -> list[SearchParameter]:
    return list(_load().get(res_type, {}).values())


def parameter(res_type: str, name: str) -> SearchParameter | None:
    return _load().get(res_type, {}).get(name)


def indexed_parameters(res_type: str) -> list[SearchParameter]:
    return [p for p in parameters_for(res_type) if p.is_indexed]


def reference_targets(param: SearchParameter) -> list[str]:
    """The supported resource types a reference parameter can point to."""
    return [t for t in param.targets if t in SUPPORTED_TYPES]


def includes_for(res_type: str) -> list[str]:
    refs = [p for p in parameters_for(res_type) if p.type == "reference" and p.is_indexed]
    return [f"{res_type}:{p.name}" for p in refs] + (["*"] if refs else [])


def revincludes_for(res_type: str) -> list[str]:
    """`Source:param` for every reference parameter of a supported type that can point here."""
    out = []
    for source in SUPPORTED_TYPES:
        for p in parameters_for(source):
            if p.type == "reference" and p.is_indexed and res_type in p.targets and not p.name.startswith("_"):
                out.append(f"{source}:{p.name}")
    return out
