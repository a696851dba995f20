"""SMART scopes: the v2 grammar, the v1 mapping, and what a set of scopes grants.

Pure functions, no I/O (scopes-and-launch-context.html). A scope is
``(patient|user|system)/(Type|*).[c][r][u][d][s][?param=value(&param=value)*]``: the
permission letters are an in-order subset of ``cruds`` (c create, r read/vread/instance
history, u update/patch incl. update-as-create, d delete, s type/system search and
history). v1 scopes map as the spec says: ``.read`` -> ``rs``, ``.write`` -> ``cud``,
``.*`` -> ``cruds``. A malformed scope is never widened or guessed at: it is set aside
with the reason, and grants nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote

LETTERS = "cruds"
CONTEXTS = ("patient", "user", "system")
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
# Scopes that are not about resources (launch context, identity, token lifetime).
OTHER_SCOPES = {"openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                "offline_access", "online_access"}
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.([A-Za-z*]+)(?:\?(.*))?\Z")
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.:]{0,63}\Z")
MAX_SCOPES = 100
CRITERION_SAFE = "|:/.-_~*,$"  # what stays readable in a written-back criterion
MAX_SCOPE_LENGTH = 512


class ScopeError(ValueError):
    """A scope string that does not follow the grammar; the message says why."""


@dataclass(frozen=True)
class Scope:
    """One resource scope: who it speaks for, which type, which letters, which criteria."""

    context: str
    res_type: str  # a type name or "*"
    permissions: str  # in-order subset of "cruds"
    criteria: tuple[tuple[str, str], ...] = ()

    def grants(self, letter: str, res_type: str) -> bool:
        return letter in self.permissions and self.res_type in ("*", res_type)

    def text(self) -> str:
        query = "&".join(f"{k}={quote(v, safe=CRITERION_SAFE)}" for k, v in self.criteria)
        return f"{self.context}/{self.res_type}.{self.permissions}" + (f"?{query}" if query else "")


@dataclass
class ScopeSet:
    """The scopes of a token: resource scopes, other scopes, and those set aside (with why)."""

    scopes: list[Scope] = field(default_factory=list)
    other: list[str] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def granting(self, letter: str, res_type: str, contexts: tuple[str, ...] = CONTEXTS) -> list[Scope]:
        """The scopes that grant `letter` on `res_type`, in the given contexts."""
        return [s for s in self.scopes if s.context in contexts and s.grants(letter, res_type)]

    def text(self) -> str:
        return " ".join(self.other + [s.text() for s in self.scopes])


def parse_scope(text: str) -> Scope:
    """One resource scope, v2 or v1; ScopeError if it is not one."""
    if len(text) > MAX_SCOPE_LENGTH:
        raise ScopeError(f"longer than {MAX_SCOPE_LENGTH} characters")
    match = _SCOPE.match(text)
    if match is None:
        raise ScopeError("not of the form (patient|user|system)/(Type|*).(cruds|read|write|*)")
    context, res_type, permissions, query = match.groups()
    if permissions in V1_PERMISSIONS:
        if query is not None:
            raise ScopeError("v1 scopes (.read, .write, .*) take no ?criteria")
        return Scope(context, res_type, V1_PERMISSIONS[permissions])
    if not is_ordered_subset(permissions):
        raise ScopeError(f"permissions {permissions!r} are not an in-order subset of 'cruds'")
    return Scope(context, res_type, permissions, parse_criteria(query))


def is_ordered_subset(permissions: str) -> bool:
    positions = [LETTERS.find(letter) for letter in permissions]
    return bool(permissions) and -1 not in positions and positions == sorted(set(positions))


def parse_criteria(query: str | None) -> tuple[tuple[str, str], ...]:
    """``?param=value&...`` of a granular scope, url-decoded; every criterion must have a value."""
    if query is None:
        return ()
    if not query:
        raise ScopeError("'?' must be followed by param=value criteria")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not pairs or len(pairs) != query.count("&") + 1:
        raise ScopeError("criteria must be param=value pairs joined by '&'")
    for name, value in pairs:
        if not _PARAM_NAME.match(name) or not value:
            raise ScopeError(f"criterion {name!r}={value!r} needs a parameter name and a value")
        if any(c.isspace() or c in "&=?" or ord(c) < 32 for c in value):
            # A decoded space would split the scope in two when the token's scope is written.
            raise ScopeError(f"criterion {name!r} has a space, '&', '=' or '?' in its value")
    return tuple(sorted(pairs))


def parse_scopes(text: str | None) -> ScopeSet:
    """A space-separated scope string (a token's ``scope`` claim) as a ScopeSet."""
    out = ScopeSet()
    words = (text or "").split()
    for word in words[:MAX_SCOPES]:
        if word in OTHER_SCOPES or word.startswith("launch/"):
            out.other.append(word)
            continue
        try:
            scope = parse_scope(word)
        except ScopeError as exc:
            out.rejected.append((word[:80], str(exc)))
            continue
        if scope not in out.scopes:
            out.scopes.append(scope)
    for word in words[MAX_SCOPES:]:
        out.rejected.append((word[:80], f"more than {MAX_SCOPES} scopes"))
    return out


def intersect(requested: Scope, allowed: Scope) -> Scope | None:
    """What of `requested` `allowed` permits: same context, the narrower type, the common
    letters, and the criteria of both (criteria only ever narrow)."""
    if requested.context != allowed.context:
        return None
    if allowed.res_type == "*":
        res_type = requested.res_type
    elif requested.res_type in ("*", allowed.res_type):
        res_type = allowed.res_type
    else:
        return None
    permissions = "".join(letter for letter in LETTERS
                          if letter in requested.permissions and letter in allowed.permissions)
    if not permissions:
        return None
    criteria = tuple(sorted(set(requested.criteria) | set(allowed.criteria)))
    return Scope(requested.context, res_type, permissions, criteria)


def grant(requested: ScopeSet, allowed: ScopeSet) -> ScopeSet:
    """The scopes a token gets: each requested scope cut down to what the client may have."""
    out = ScopeSet(other=[w for w in requested.other if w in allowed.other], rejected=list(requested.rejected))
    for scope in requested.scopes:
        for permitted in allowed.scopes:
            granted = intersect(scope, permitted)
            if granted is not None and granted not in out.scopes:
                out.scopes.append(granted)
    return out
