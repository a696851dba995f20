"""References inside a Bundle: finding them, resolving fullUrls and conditional references.

http.html#trules: "Servers SHALL replace all matching links in the bundle" (an exact
match, or a match of the part before '#'), and in a transaction a reference may be a
search URL (`Patient?identifier=...`) that must match exactly one resource.

Only ``Reference.reference`` values are rewritten. Identifier values and other strings
are left alone on purpose: an EHR may use a study's ``urn:oid:`` both as the entry's
fullUrl and as the ImagingStudy identifier, and that identifier must survive intact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from ..errors import Invalid

CONDITIONAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]{0,63})\?(.+)$")
BUNDLE_LOCAL = ("urn:uuid:", "urn:oid:")


@dataclass
class ReferenceSite:
    """One Reference.reference in a resource: the dict holding it, its value and where it is."""

    holder: dict
    value: str
    path: tuple

    def element_path(self, prefix: str) -> str:
        out = prefix
        for part in self.path:
            out += f"[{part}]" if isinstance(part, int) else f".{part}"
        return out + ".reference"


def find_reference_sites(resource: dict) -> list[ReferenceSite]:
    """Every string-valued `reference` element in the resource, nested at any depth."""
    sites: list[ReferenceSite] = []
    _walk(resource, [], sites)
    return sites


def _walk(node, path: list, sites: list[ReferenceSite]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                sites.append(ReferenceSite(node, value, tuple(path)))
            elif isinstance(value, (dict, list)):
                path.append(key)
                _walk(value, path, sites)
                path.pop()
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, (dict, list)):
                path.append(i)
                _walk(value, path, sites)
                path.pop()


def split_fragment(reference: str) -> tuple[str, str]:
    base, sep, fragment = reference.partition("#")
    return base, (sep + fragment)


def is_bundle_local(reference: str) -> bool:
    return reference.startswith(BUNDLE_LOCAL)


def conditional_reference(reference: str) -> tuple[str, str] | None:
    """(`Patient`, `identifier=...`) for a search URL reference, else None."""
    match = CONDITIONAL_REFERENCE.match(reference)
    return (match.group(1), match.group(2)) if match else None


def check_local_targets(sites: list[ReferenceSite], full_urls: dict[str, str], prefix: str) -> None:
    """A urn:uuid:/urn:oid: reference must name an entry of this Bundle (nothing else can resolve it)."""
    for site in sites:
        target, _ = split_fragment(site.value)
        if is_bundle_local(target) and target not in full_urls:
            raise Invalid(f"reference {site.value!r} does not match the fullUrl of any entry in this Bundle",
                          [site.element_path(prefix)], code="not-found")


def substitute_local(sites: list[ReferenceSite], targets: dict[str, str]) -> None:
    """Point every reference to a fullUrl in `targets` at its `Type/id` (keeping a '#fragment')."""
    for site in sites:
        target, fragment = split_fragment(site.value)
        replacement = targets.get(target)
        if replacement is not None:
            site.holder["reference"] = replacement + fragment


# -- conditional criteria evaluated against resources held in memory --------------------

def matches_in_memory(resource: dict, res_id: str | None, criteria: list[tuple[str, str]]) -> bool | None:
    """Whether a resource not yet stored matches search criteria; None when a criterion
    cannot be evaluated here (only `_id` and `identifier` tokens can)."""
    for name, value in criteria:
        if name == "_id":
            ok = res_id is not None and res_id in value.split(",")
        elif name == "identifier":
            ok = any(_identifier_matches(resource, token) for token in value.split(","))
        else:
            return None
        if not ok:
            return False
    return True


def _identifier_matches(resource: dict, token: str) -> bool:
    for ident in iter_identifiers(resource):
        system, code = ident.get("system"), ident.get("value")
        if "|" not in token:
            if code == token:
                return True
            continue
        want_system, want_code = token.split("|", 1)
        if not want_system and code == want_code and system is None:
            return True
        if want_system and not want_code and system == want_system:
            return True
        if want_system and want_code and system == want_system and code == want_code:
            return True
    return False


def iter_identifiers(resource: dict) -> Iterator[dict]:
    for ident in resource.get("identifier") or []:
        if isinstance(ident, dict):
            yield ident


def substitute_criteria(criteria: list[tuple[str, str]],
                        targets: dict[str, str | None]) -> tuple[list[tuple[str, str]], list[str]]:
    """Criteria values naming another entry's fullUrl (`subject=urn:uuid:...`) become that
    entry's `Type/id` (the bare id for `_id`). `targets` maps fullUrl -> Type/id, or None
    while that entry's identity is not known yet. Returns the criteria and the fullUrls used."""
    depends: list[str] = []
    out = []
    for name, value in criteria:
        items = value.split(",")
        if not any(item in targets for item in items):
            out.append((name, value))
            continue
        replaced = []
        for item in items:
            if item in targets:
                depends.append(item)
                target = targets[item]
                if target is not None:
                    item = target.split("/", 1)[1] if name == "_id" else target
            replaced.append(item)
        out.append((name, ",".join(replaced)))
    return out, depends
