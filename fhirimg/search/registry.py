"""The search parameters this server supports, per resource type.

One registry feeds the index extraction, the query builder and the CapabilityStatement,
so what is advertised is exactly what works.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SearchParameter:
    name: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    expression: str | None
    documentation: str
    targets: tuple[str, ...] = field(default=())
    definition: str | None = None


_COMMON = [
    SearchParameter("_id", "token", "Resource.id", "Logical id of this artifact",
                    definition="http://hl7.org/fhir/SearchParameter/Resource-id"),
]
_IDENTIFIER = {
    res_type: SearchParameter("identifier", "token", f"{res_type}.identifier",
                              f"Identifier of the {res_type}",
                              definition=f"http://hl7.org/fhir/SearchParameter/{res_type}-identifier")
    for res_type in ("Patient", "ImagingStudy", "Endpoint", "Task")
}


def parameters_for(res_type: str) -> list[SearchParameter]:
    return _COMMON + ([_IDENTIFIER[res_type]] if res_type in _IDENTIFIER else [])


def includes_for(res_type: str) -> list[str]:
    return []


def revincludes_for(res_type: str) -> list[str]:
    return []
