"""One search criterion (`name[:modifier][.chain]=value[,value]`) as SQL: the ids it selects.

`match_ids(res_type, name, value)` returns a SELECT of the ids of live resources of
`res_type` that match, following search.html for each parameter type; chaining and
`_has` recurse into it. Bad values and unknown modifiers raise Invalid naming the
parameter; an unknown parameter raises UnknownParameter (the caller decides, by
Prefer: handling, whether that is an error).
"""
from __future__ import annotations

import re
import time

from sqlalchemy import and_, exists, literal, not_, or_, select, true
from sqlalchemy.sql import Select

from ..errors import Invalid
from ..resources import SUPPORTED_TYPES
from ..store.schema import resource_current
from . import registry
from .dates import BadDate, date_range
from .extract import normalise_string, parse_reference
from .tables import (
    search_date,
    search_reference,
    search_string,
    search_token,
    search_uri,
)

MAX_CHAIN_DEPTH = 3
DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
TOP = "\U0010ffff"  # sorts after every string (byte-wise), closes prefix ranges


class UnknownParameter(Invalid):
    def __init__(self, res_type: str, name: str):
        super().__init__(f"unknown search parameter {name!r} for {res_type}", [name], code="not-supported")
        self.name = name


def split_values(value: str) -> list[str]:
    """Comma = OR; `\\,` is a literal comma (search.html#escaping)."""
    parts = re.split(r"(?<!\\),", value)
    return [p.replace("\\,", ",").replace("\\|", "|").replace("\\$", "$") for p in parts]


def match_ids(res_type: str, name: str, value: str, base: str | None = None, depth: int = 0) -> tuple[Select, bool]:
    """(SELECT of matching ids, negated): when negated the criterion keeps ids NOT in it."""
    ids, negated = _match_ids(res_type, name, value, base, depth)
    # Never let SQLAlchemy correlate an inner index table with an outer use of the same table.
    return ids.correlate(None), negated


def _match_ids(res_type: str, name: str, value: str, base: str | None, depth: int) -> tuple[Select, bool]:
    if depth > MAX_CHAIN_DEPTH:
        raise Invalid(f"search parameter {name!r} chains deeper than {MAX_CHAIN_DEPTH} levels", [name])
    if name.startswith("_has:"):
        return _has(res_type, name, value, base, depth), False
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    param = registry.parameter(res_type, code)
    if param is None or param.type == "special":
        raise UnknownParameter(res_type, name)
    if dot:
        return _chain(res_type, param, modifier or None, rest, value, name, base, depth), False
    if value == "":
        raise Invalid(f"search parameter {name!r} has an empty value", [name])
    if modifier == "missing":
        return _missing(res_type, param, value, name)
    return _match_values(res_type, param, modifier or None, value, name, base)


def _live_ids(res_type: str):
    cur = resource_current.alias()
    return cur, select(cur.c.res_id).where(cur.c.res_type == res_type, cur.c.is_deleted.is_(False))


def _rows_of(table, res_type: str, param_name: str, where) -> Select:
    return select(table.c.res_id).where(table.c.res_type == res_type, table.c.param == param_name, where)


def _check_modifier(param, modifier: str | None, name: str) -> None:
    if modifier is None:
        return
    if param.type == "reference" and (modifier in SUPPORTED_TYPES or modifier[:1].isupper()):
        return
    if modifier not in registry.MODIFIERS.get(param.type, set()) or (param.name == "_id" and modifier == "text"):
        allowed = ", ".join(sorted(registry.MODIFIERS.get(param.type, set()))) or "none"
        raise Invalid(f"modifier :{modifier} is not supported on {param.type} parameter {param.name!r} "
                      f"(supported: {allowed})", [name])


def _missing(res_type: str, param, value: str, name: str) -> tuple[Select, bool]:
    if value not in ("true", "false"):
        raise Invalid(f"{name} takes true or false, got {value!r}", [name])
    if param.name in registry.COLUMN_PARAMETERS:
        _, ids = _live_ids(res_type)
        return ids, value == "true"  # every resource has an id and a lastUpdated
    table = _table_for(param)
    return _rows_of(table, res_type, param.name, true()), value == "true"


def _table_for(param):
    return {"token": search_token, "string": search_string, "reference": search_reference,
            "date": search_date, "uri": search_uri}[param.type]


def _match_values(res_type, param, modifier, value, name, base) -> tuple[Select, bool]:
    _check_modifier(param, modifier, name)
    values = split_values(value)
    if param.name == "_id":
        cur, ids = _live_ids(res_type)
        return ids.where(cur.c.res_id.in_(values)), modifier == "not"
    if param.name == "_lastUpdated":
        cur, ids = _live_ids(res_type)
        preds = [date_predicate(v, name, cur.c.last_updated_ms, cur.c.last_updated_ms) for v in values]
        return ids.where(or_(*preds)), False
    if param.expression is None:
        cur, ids = _live_ids(res_type)
        return ids.where(literal(False)), False  # nothing indexed (e.g. ImagingStudy reason)
    builder = {"token": _token_predicate, "string": _string_predicate, "reference": _reference_predicate,
               "date": _date_predicate, "uri": _uri_predicate}.get(param.type)
    if builder is None:
        raise Invalid(f"search parameter {param.name!r} of type {param.type} is not supported", [name])
    table = _table_for(param)
    preds = [builder(table, v, modifier, name, param, base) for v in values]
    negated = modifier == "not"
    return _rows_of(table, res_type, param.name, or_(*preds)), negated


# -- token ---------------------------------------------------------------------------
def _token_predicate(table, value, modifier, name, param, base):
    if modifier == "text":
        norm = normalise_string(value)
        return and_(table.c.text >= norm, table.c.text < norm + TOP)
    if "|" not in value:
        return table.c.code == value
    system, code = value.split("|", 1)
    if not system:
        return and_(table.c.code == code, table.c.system.is_(None))
    if not code:
        return table.c.system == system
    return and_(table.c.system == system, table.c.code == code)


# -- string --------------------------------------------------------------------------
def _string_predicate(table, value, modifier, name, param, base):
    if modifier == "exact":
        return table.c.exact == value
    norm = normalise_string(value)
    if modifier == "contains":
        escaped = norm.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return table.c.norm.like(f"%{escaped}%", escape="\\")
    return and_(table.c.norm >= norm, table.c.norm < norm + TOP)


# -- reference -----------------------------------------------------------------------
def _reference_predicate(table, value, modifier, name, param, base):
    if modifier == "identifier":
        system, bar, code = value.rpartition("|") if "|" in value else ("", "", value)
        if bar and system and code:
            return and_(table.c.ident_system == system, table.c.ident_value == code)
        if bar and system:
            return table.c.ident_system == system
        return table.c.ident_value == code
    value = re.sub(r"/_history/[^/]+$", "", value)
    if base and value.startswith(base.rstrip("/") + "/"):
        local = value[len(base.rstrip("/")) + 1:]
        target_type, target_id, _ = parse_reference(local)
        if target_type:
            return or_(and_(table.c.target_type == target_type, table.c.target_id == target_id),
                       table.c.url == value)
    if "://" in value or value.startswith("urn:"):
        return table.c.url == value
    target_type, target_id, _ = parse_reference(value)
    if modifier:  # a type modifier: subject:Patient=123
        if target_type and target_type != modifier:
            raise Invalid(f"{name}={value}: the type modifier and the reference type differ", [name])
        return and_(table.c.target_type == modifier, table.c.target_id == (target_id or value))
    if target_type:
        return and_(table.c.target_type == target_type, table.c.target_id == target_id)
    if not re.match(r"^[A-Za-z0-9\-.]{1,64}$", value):
        raise Invalid(f"{name}={value!r} is not a reference (id, Type/id or absolute URL)", [name])
    return table.c.target_id == value


# -- date ----------------------------------------------------------------------------
def _date_predicate(table, value, modifier, name, param, base):
    return date_predicate(value, name, table.c.low_ms, table.c.high_ms)


def date_predicate(value: str, name: str, low, high):
    """search.html#prefix on ranges: the search range [vl, vh] against the resource's [low, high]."""
    prefix = value[:2] if value[:2].isalpha() else "eq"
    text = value[2:] if value[:2].isalpha() else value
    if prefix not in DATE_PREFIXES:
        raise Invalid(f"{name}: unknown prefix {prefix!r} (use one of {', '.join(DATE_PREFIXES)})", [name])
    try:
        vl, vh = date_range(text)
    except BadDate as exc:
        raise Invalid(f"{name}: {exc}", [name]) from None
    within = and_(low >= vl, high <= vh)
    if prefix == "eq":
        return within
    if prefix == "ne":
        return not_(within)
    if prefix == "gt":
        return high > vh
    if prefix == "lt":
        return low < vl
    if prefix == "ge":  # the leading range bound keeps an index range scan possible
        return and_(high >= vl, or_(high > vh, within))
    if prefix == "le":
        return and_(low <= vh, or_(low < vl, within))
    if prefix == "sa":
        return low > vh
    if prefix == "eb":
        return high < vl
    # ap: within 10% of the distance between the value and now (search.html#prefix)
    gap = max(int(abs(time.time() * 1000 - (vl + vh) // 2) * 0.1), vh - vl + 1)
    return and_(low <= vh + gap, high >= vl - gap)


# -- uri -----------------------------------------------------------------------------
def _uri_predicate(table, value, modifier, name, param, base):
    if modifier == "below":
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return table.c.uri.like(f"{escaped}%", escape="\\")
    if modifier == "above":
        prefixes = [value[:i] for i in range(len(value), 0, -1) if i == len(value) or value[i] == "/"]
        return table.c.uri.in_(prefixes)
    return table.c.uri == value


# -- chaining and reverse chaining ----------------------------------------------------
def _chain(res_type, param, type_modifier, rest, value, name, base, depth) -> Select:
    if param.type != "reference":
        raise Invalid(f"{name}: only reference parameters can be chained ({param.name!r} is {param.type})", [name])
    targets = [type_modifier] if type_modifier else registry.reference_targets(param)
    inner_code = rest.split(".", 1)[0].split(":", 1)[0]
    targets = [t for t in targets if t in SUPPORTED_TYPES and registry.parameter(t, inner_code)]
    if not targets:
        raise Invalid(f"{name}: no supported target type of {param.name!r} has a parameter {inner_code!r}", [name])
    ref = search_reference
    branches = []
    for target in targets:
        inner, negated = match_ids(target, rest, value, base, depth + 1)
        id_test = ref.c.target_id.not_in(inner) if negated else ref.c.target_id.in_(inner)
        branches.append(and_(ref.c.target_type == target, id_test))
    return _rows_of(ref, res_type, param.name, or_(*branches))


def _has(res_type, name, value, base, depth) -> Select:
    parts = name.split(":", 3)
    if len(parts) < 4 or not all(parts[1:]):
        raise Invalid(f"{name}: _has takes _has:Type:reference-parameter:parameter=value", [name])
    _, source_type, ref_name, rest = parts
    if source_type not in SUPPORTED_TYPES:
        raise Invalid(f"{name}: {source_type!r} is not a supported resource type", [name])
    ref_param = registry.parameter(source_type, ref_name)
    if ref_param is None or ref_param.type != "reference":
        raise Invalid(f"{name}: {source_type} has no reference parameter {ref_name!r}", [name])
    inner, negated = match_ids(source_type, rest, value, base, depth + 1)
    ref = search_reference
    id_test = ref.c.res_id.not_in(inner) if negated else ref.c.res_id.in_(inner)
    return select(ref.c.target_id).where(ref.c.res_type == source_type, ref.c.param == ref_name,
                                         ref.c.target_type == res_type, id_test)


# -- a criterion as a condition on the searched table ----------------------------------
SELECTIVE_TOKENS = {"identifier", "series", "instance", "group-identifier", "email", "phone", "telecom"}


def criterion_condition(res_type: str, name: str, value: str, cur, base: str | None = None):
    """The WHERE condition on `cur` (resource_current) for one criterion.

    Selective criteria (an identifier, a reference) become `id IN (ids)`, which lets the
    database start from the few matching ids; broad ones (a modality, a date range) become
    a correlated EXISTS probed per candidate row, so a sorted, limited page can walk an
    index in order and stop after one page instead of collecting every match first.
    """
    code, _, modifier = name.partition(":")
    if code in registry.COLUMN_PARAMETERS and "." not in name and registry.parameter(res_type, code):
        return _column_condition(res_type, code, modifier or None, value, name, cur)
    ids, negated = match_ids(res_type, name, value, base)
    if is_selective(res_type, name) and not negated:
        return cur.c.res_id.in_(ids)
    probe = exists(ids.where(ids.selected_columns[0] == cur.c.res_id).correlate(cur))
    return ~probe if negated else probe


def _column_condition(res_type, code, modifier, value, name, cur):
    param = registry.parameter(res_type, code)
    _check_modifier(param, modifier, name)
    if modifier == "missing":
        if value not in ("true", "false"):
            raise Invalid(f"{name} takes true or false, got {value!r}", [name])
        return literal(value == "false")
    values = split_values(value)
    if code == "_id":
        return cur.c.res_id.not_in(values) if modifier == "not" else cur.c.res_id.in_(values)
    return or_(*[date_predicate(v, name, cur.c.last_updated_ms, cur.c.last_updated_ms) for v in values])


def is_selective(res_type: str, name: str) -> bool:
    if name.startswith("_has:"):
        parts = name.split(":", 3)
        return len(parts) == 4 and is_selective(parts[1], parts[3])
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    param = registry.parameter(res_type, code)
    if param is None or modifier in ("missing", "not", "text", "contains", "below", "above"):
        return False
    if dot:
        targets = [modifier] if modifier else registry.reference_targets(param)
        return bool(targets) and targets[0] in SUPPORTED_TYPES and is_selective(targets[0], rest)
    if param.type == "reference":
        return True
    if param.type == "token":
        return code in SELECTIVE_TOKENS or code == "_id"
    return param.type == "uri"
