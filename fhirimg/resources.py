"""Supported resource types and R5 validation.

The fhir.resources models check structure, types, unknown elements and the formats of
primitives. They let some invalid content through, so this module adds the rules they
lack (json.html and datatypes.html):

* JSON ``null``, empty objects, empty arrays and empty strings are not allowed;
* codes with a *required* binding must be one of the bound codes (the models carry the
  codes in ``enum_values`` but do not enforce them: ImagingStudy.status "bogus" passes);
* a resource id is at most 64 characters;
* a Reference whose target types are restricted must point at one of them.

Validation is a pure function of the content, and the same content comes again and
again (an EHR names its archive's Endpoint in every Bundle it pushes; a retrying client
re-sends whole Bundles), so contents found valid are remembered (``ValidContents``).
"""
from __future__ import annotations

import re
import threading
from collections import OrderedDict
from functools import lru_cache
from itertools import islice
from typing import Any, Iterator

import orjson

from fhir.resources import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

from .narrative import narrative_issues
from .errors import MAX_ISSUES, Invalid, Issue, Unprocessable
from .requestlimits import MAX_JSON_DEPTH

SUPPORTED_TYPES = ("Patient", "ImagingStudy", "Endpoint", "Task", "Subscription")
# What replication carries when a link names no types: a Subscription names this server's own
# subscribers (a copy elsewhere would notify them twice, and carry their endpoints' headers).
REPLICATED_BY_DEFAULT = tuple(t for t in SUPPORTED_TYPES if t != "Subscription")
# Types whose content depends on this server's configuration (checked per request, never remembered).
CONFIGURED_TYPES = frozenset({"Subscription"})
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
_REFERENCE_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")
_CONDITIONAL_REFERENCE = re.compile(r"^([A-Z][A-Za-z]+)\?")


def is_supported_type(name: str) -> bool:
    return name in SUPPORTED_TYPES


def is_valid_id(value: Any) -> bool:
    return isinstance(value, str) and bool(ID_PATTERN.match(value))


class ValidContents:
    """The last ``max_entries`` contents that passed validation, by their canonical JSON.

    Only successes are kept (a failure is validated again, to name its errors); contents
    larger than ``max_bytes`` are not kept. Shared by the threads of a process.
    """

    def __init__(self, max_entries: int = 4096, max_bytes: int = 16 * 1024):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self.entries: OrderedDict[bytes, None] = OrderedDict()
        self.lock = threading.Lock()

    def key_of(self, resource: Any, expected_type: str | None) -> bytes | None:
        try:
            text = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
        except (TypeError, orjson.JSONEncodeError):
            return None
        return (expected_type or "").encode() + b"\0" + text if len(text) <= self.max_bytes else None

    def __contains__(self, key: bytes) -> bool:
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return True
            return False

    def add(self, key: bytes) -> None:
        with self.lock:
            self.entries[key] = None
            if len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)


VALID_CONTENTS = ValidContents()


def validate_resource(resource: Any, expected_type: str | None = None) -> None:
    """Validate JSON content as an R5 resource; raise a 400/422 naming every bad element."""
    if isinstance(resource, dict) and resource.get("resourceType") in CONFIGURED_TYPES:
        check_resource(resource, expected_type)
        configured_rules(resource)
        return
    key = VALID_CONTENTS.key_of(resource, expected_type)
    if key is not None and key in VALID_CONTENTS:
        return
    check_resource(resource, expected_type)
    if key is not None:
        VALID_CONTENTS.add(key)


def configured_rules(resource: dict) -> None:
    """The rules that depend on this server's configuration (a Subscription's endpoint must
    pass the allow-list): 422 naming the element."""
    from .subscriptions.validate import configured_issues
    issues = configured_issues(resource)
    if issues:
        raise Unprocessable(issues[0].diagnostics, code=issues[0].code, issues=issues)


def check_resource(resource: Any, expected_type: str | None = None) -> FHIRAbstractModel:
    """The checks of validate_resource, every time; returns the parsed model."""
    if not isinstance(resource, dict):
        raise Invalid("the resource must be a JSON object", ["Resource"], code="structure")
    res_type = resource.get("resourceType")
    if not isinstance(res_type, str) or not res_type:
        raise Invalid("resourceType is missing", ["Resource.resourceType"], code="required")
    if expected_type and res_type != expected_type:
        raise Invalid(f"resourceType {res_type!r} does not match the expected type {expected_type!r}",
                      [f"{res_type}.resourceType"])
    if not is_supported_type(res_type):
        raise Invalid(f"resource type {res_type!r} is not supported here "
                      f"(supported: {', '.join(SUPPORTED_TYPES)})", [f"{res_type}.resourceType"],
                      code="not-supported")
    issues = first_issues(find_empty_values(resource, res_type)) + narrative_issues(resource, res_type)
    if "id" in resource and not is_valid_id(resource["id"]):
        issues.append(Issue("value", "id must be 1-64 characters of A-Z a-z 0-9 - .", [f"{res_type}.id"]))
    if issues:
        raise Invalid(issues[0].diagnostics, issues=issues)
    model = _parse_model(resource, res_type)
    issues = list(find_rule_violations(model, res_type)) + type_rules(resource, res_type)
    if issues:
        raise Unprocessable(issues[0].diagnostics, code="code-invalid", issues=issues)
    return model


def first_issues(found: Iterator[Issue]) -> list[Issue]:
    """Stop at the issues an answer can show: a million empty objects took 17 s and 700 MB,
    and answered 121 MB of OperationOutcome."""
    issues = list(islice(found, MAX_ISSUES + 1))
    if len(issues) > MAX_ISSUES:
        issues = issues[:MAX_ISSUES - 1] + [Issue("too-costly", f"validation stopped after {MAX_ISSUES - 1} "
                                                  "issues; the rest of the resource was not examined")]
    return issues


def find_empty_values(node: Any, path: str, depth: int = 1) -> Iterator[Issue]:
    """json.html: no nulls (except inside primitive-extension arrays), no empty {} [] or "";
    and what the validator and the database cannot take: nesting deeper than MAX_JSON_DEPTH
    (fhir.resources recursed out at ~300 levels, a 500) and NUL in a string (PostgreSQL's
    text refuses it; a FHIR string may not hold it). The walk every write makes anyway."""
    if depth > MAX_JSON_DEPTH:
        yield Issue("structure", f"the resource nests deeper than {MAX_JSON_DEPTH} levels", [path])
        return
    if isinstance(node, dict):
        if not node:
            yield Issue("invalid", "empty objects are not allowed", [path])
        for key, value in node.items():
            if "\x00" in key:
                yield Issue("structure", "a property name contains a NUL character", [path])
            elif value is None:
                yield Issue("invalid", f"{key} is null: leave the element out instead", [f"{path}.{key}"])
            else:
                yield from find_empty_values(value, f"{path}.{key}", depth + 1)
    elif isinstance(node, list):
        if not node:
            yield Issue("invalid", "empty arrays are not allowed", [path])
        for i, value in enumerate(node):
            # A null in an array is allowed only as a placeholder aligning value and _value arrays.
            if value is not None:
                yield from find_empty_values(value, f"{path}[{i}]", depth + 1)
            elif not path.rsplit(".", 1)[-1].startswith("_"):
                yield Issue("invalid", "null array items are not allowed", [f"{path}[{i}]"])
    elif isinstance(node, str):
        if not node.strip():
            yield Issue("invalid", "empty or blank strings are not allowed", [path])
        elif "\x00" in node:
            yield Issue("invalid", "a string contains a NUL character", [path])


def _parse_model(resource: dict, res_type: str) -> FHIRAbstractModel:
    try:
        return get_fhir_model_class(res_type).model_validate(resource)
    except ValidationError as exc:
        issues = [Issue(_issue_code(err), _error_message(err), [_loc_to_path(res_type, err["loc"])])
                  for err in exc.errors(include_url=False)]
        raise Invalid(issues[0].diagnostics, issues=issues) from None


def _issue_code(err: dict) -> str:
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        return "structure"
    if kind == "missing":
        return "required"
    return "value"


def _error_message(err: dict) -> str:
    kind = err.get("type", "")
    name = _loc_to_path("", err["loc"]).lstrip(".") or "resource"
    if kind == "extra_forbidden":
        return f"unknown element {name!r}"
    if kind == "missing":
        return f"required element {name!r} is missing"
    return f"{name}: {err.get('msg', 'invalid value')} (got {_short(err.get('input'))})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _loc_to_path(root: str, loc: tuple) -> str:
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part and not part[0].isupper() and "[" not in part:
            # pydantic adds union/function tags (e.g. "function-after[...]"); keep element names only
            path += f".{part}"
    return path


def type_rules(resource: dict, res_type: str) -> list[Issue]:
    """Rules of one type beyond its structure (what this server can honour)."""
    if res_type == "Subscription":
        from .subscriptions.validate import content_issues
        return content_issues(resource)
    return []


def find_rule_violations(model: FHIRAbstractModel, path: str) -> Iterator[Issue]:
    """Walk the parsed model: required code bindings and reference target types."""
    for name, alias, enum_values, ref_types in _checked_fields(type(model)):
        value = getattr(model, name, None)
        if value is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            item_path = f"{path}.{alias}[{i}]" if isinstance(value, list) else f"{path}.{alias}"
            if enum_values and isinstance(item, str) and item not in enum_values:
                yield Issue("code-invalid", f"{item!r} is not a valid code for {item_path.split('.', 1)[-1]}"
                            f" (required binding: {', '.join(sorted(enum_values))})", [item_path])
            elif isinstance(item, FHIRAbstractModel):
                if ref_types:
                    yield from _check_reference_target(item, ref_types, item_path)
                yield from find_rule_violations(item, item_path)


def _check_reference_target(ref: FHIRAbstractModel, allowed: tuple, path: str) -> Iterator[Issue]:
    literal = getattr(ref, "reference", None)
    if not isinstance(literal, str) or "Resource" in allowed:
        return
    match = _REFERENCE_TYPE.search(literal.split("?")[0]) or _CONDITIONAL_REFERENCE.match(literal)
    if match and match.group(1) not in allowed:
        yield Issue("value", f"reference to {match.group(1)} is not allowed here "
                    f"(allowed: {', '.join(allowed)})", [f"{path}.reference"])


# R5 task-status (valueset-task-status): fhir.resources lists only "draft, requested, received, accepted, +".
ABBREVIATED_VALUE_SETS = {
    ("Task", "status"): frozenset({"draft", "requested", "received", "accepted", "rejected", "ready", "cancelled",
                                   "in-progress", "on-hold", "failed", "completed", "entered-in-error"}),
}


@lru_cache(maxsize=None)
def _checked_fields(model_class: type) -> tuple:
    """Per model class: (name, alias, required-binding codes, reference target types)."""
    out = []
    for name, info in model_class.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        enum_values = frozenset(extra.get("enum_values") or ())
        if "+" in enum_values:  # fhir.resources cut the value set short ("+" = more): use the full one
            enum_values = ABBREVIATED_VALUE_SETS.get((model_class.__name__, info.alias or name), frozenset())
        ref_types = tuple(extra.get("enum_reference_types") or ())
        out.append((name, info.alias or name, enum_values, ref_types))
    return tuple(out)
