"""The one access decision: may this principal do this interaction on this type, and on
which of its resources. Every path asks here (REST views, Bundle entries, search and its
includes, history, $retrieve, DICOMweb) and nowhere else is access decided.

``decide`` answers at the type level from the scopes; its ``Access`` carries the narrowing
(patient compartment, granular ``?param=value`` criteria, the client's registered patients)
as one SQL condition, so a search is narrowed in SQL - pages and totals count only what
the token may see - and a single resource is checked by the same condition.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import and_, or_, select, true

from ..errors import FhirError
from ..search.criteria import criterion_condition
from ..store.schema import resource_current
from .compartment import in_compartment, patient_ids
from .errors import Forbidden
from .principal import Principal

LETTER_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
METHOD_LETTERS = {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}


@dataclass
class Rule:
    """One scope's share: the patients it is limited to (None: any) and its criteria."""

    patients: tuple[str, ...] | None
    criteria: tuple[tuple[str, str], ...] = ()


@dataclass
class Access:
    principal: Principal
    letter: str
    res_type: str
    rules: list[Rule] = field(default_factory=list)
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return bool(self.rules)

    @property
    def is_narrowed(self) -> bool:
        """Whether only some resources of the type are reachable (else: all, no SQL needed)."""
        if self.res_type == "Subscription":
            return not self.principal.anonymous  # a client's own (owned_subscriptions)
        unrestricted = any(r.patients is None and not r.criteria for r in self.rules)
        return not unrestricted or self.principal.is_limited

    def require(self) -> "Access":
        if not self.allowed:
            raise Forbidden(self.reason)
        return self

    def condition(self, cur=resource_current):
        """The WHERE condition on `cur` selecting the reachable resources; None = all of them."""
        if not self.is_narrowed:
            return None
        if self.res_type == "Subscription":
            return owned_subscriptions(self.principal.client_id, cur)
        branches = []
        for rule in self.rules:
            parts = []
            if rule.patients is not None:
                parts.append(in_compartment(self.res_type, rule.patients, cur))
            for name, value in rule.criteria:
                try:
                    parts.append(criterion_condition(self.res_type, name, value, cur))
                except FhirError:  # a criterion this type cannot evaluate grants nothing
                    parts = None
                    break
            if parts is not None:
                branches.append(and_(*parts) if parts else true())
        scope_part = or_(*branches) if branches else ~true()
        limit = patient_ids(self.principal.patients, self.principal.organizations)
        if limit is not None:
            return and_(scope_part, in_compartment(self.res_type, limit, cur))
        return scope_part


def owned_subscriptions(client_id: str, cur=resource_current):
    """A Subscription is its client's: it names that client's endpoint and headers, and is
    delivered with that client's rights. Other clients, whatever their scopes, neither see
    nor change it (operators: `fhirimg subscriptions status`)."""
    from ..subscriptions.schema import subscription_state as st
    return cur.c.res_id.in_(select(st.c.sub_id).where(st.c.client_id == client_id))


def decide(principal: Principal, letter: str, res_type: str) -> Access:
    """What `principal` may do with `letter` (c r u d s) on `res_type` (remembered on the
    principal, which is cached with its token: a request pays for a dict lookup)."""
    found = principal.decisions.get((letter, res_type))
    if found is None:
        found = principal.decisions[(letter, res_type)] = _decide(principal, letter, res_type)
    return found


def _decide(principal: Principal, letter: str, res_type: str) -> Access:
    access = Access(principal, letter, res_type)
    skipped = []
    for scope in principal.scopes.granting(letter, res_type):
        if scope.context == "patient":
            if not principal.patient:  # never read as system-level access (SMART Imaging)
                skipped.append(scope.text())
                continue
            access.rules.append(Rule((principal.patient,), scope.criteria))
        else:
            access.rules.append(Rule(None, scope.criteria))
    if not access.rules:
        access.reason = missing_scope(principal, letter, res_type, skipped)
    return access


PATIENT_PARAMETERS = {"Patient": ("_id",), "ImagingStudy": ("patient", "subject"), "Task": ("patient", "subject")}


def require_own_patient(access: Access, criteria: list[tuple[str, str]]) -> None:
    """SMART Imaging: a patient-context token that names another patient in a search gets
    403, not an empty Bundle (only when patient scopes are all that grant the search)."""
    patient = access.principal.patient
    if patient is None or any(rule.patients is None for rule in access.rules):
        return
    for name, value in criteria:
        if name.split(":", 1)[0] not in PATIENT_PARAMETERS.get(access.res_type, ()):
            continue
        for item in value.split(","):
            named = item.rsplit("/", 1)[-1] if item.startswith(("Patient/", "http")) or "/" not in item else None
            if named is not None and named != patient:
                raise Forbidden(f"the token's patient context is Patient/{patient}; {name}={item} asks for "
                                f"Patient/{named}", [name])


def missing_scope(principal: Principal, letter: str, res_type: str, skipped: list[str]) -> str:
    text = (f"the token has no scope that allows {LETTER_NAMES[letter]} on {res_type} "
            f"(e.g. system/{res_type}.{letter} or patient/{res_type}.{letter} with a patient context)")
    if skipped:
        text += f"; {', '.join(skipped)} need a patient context, which the token does not have"
    if principal.notes:
        text += "; " + "; ".join(principal.notes)
    return text


def reachable(conn, access: Access, res_type: str, res_id: str) -> bool:
    """Whether the current version of one resource is within `access` (one indexed probe)."""
    condition = access.condition()
    if condition is None:
        return True
    cur = resource_current
    query = select(cur.c.res_id).where(cur.c.res_type == res_type, cur.c.res_id == res_id, condition)
    return conn.execute(query).first() is not None


def reachable_ids(conn, access: Access, res_type: str, ids: list[str]) -> set[str]:
    condition = access.condition()
    if condition is None:
        return set(ids)
    cur = resource_current
    out = set()
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        query = select(cur.c.res_id).where(cur.c.res_type == res_type, cur.c.res_id.in_(chunk), condition)
        out |= {row.res_id for row in conn.execute(query)}
    return out


def require_resource(conn, principal: Principal, letter: str, res_type: str, res_id: str) -> Access:
    """403 unless `principal` may `letter` this very resource."""
    access = decide(principal, letter, res_type).require()
    if not reachable(conn, access, res_type, res_id):
        raise Forbidden(f"{res_type}/{res_id} is outside what the token may {LETTER_NAMES[letter]}"
                        + (f" (patient context Patient/{principal.patient})" if principal.patient else ""),
                        resource=(res_type, res_id))
    return access


def entry_letter(method: str, res_id: str | None) -> str:
    """The permission a Bundle entry's request needs (batch/transaction have none of their own)."""
    if method in ("GET", "HEAD"):
        return "r" if res_id else "s"
    return METHOD_LETTERS[method]


def require_version(conn, principal: Principal, stored) -> None:
    """403 unless `principal` may read this version - not only the resource as it is now: an
    ImagingStudy moved from one patient to another, or a deleted id taken over, must not
    show its earlier owner's versions."""
    access = decide(principal, "r", stored.res_type).require()
    if not access.is_narrowed or stored.resource is None:
        return
    if not version_in_reach(conn, access, stored.res_type, stored.res_id, stored.resource):
        raise Forbidden(f"version {stored.version} of {stored.res_type}/{stored.res_id} is outside what the "
                        "token may read", resource=(stored.res_type, stored.res_id))


def version_in_reach(conn, access: Access, res_type: str, res_id: str, resource: dict) -> bool:
    """The compartment test on a version's own content. Scope criteria and organizations are
    evaluated only by the index (current versions), so with them an old version is refused."""
    if res_type == "Subscription":
        return reachable(conn, access, res_type, res_id)  # its owner, whichever version
    if access.principal.organizations or any(rule.criteria for rule in access.rules):
        return False
    limit = set(access.principal.patients) or None
    for rule in access.rules:
        allowed = set(rule.patients) if rule.patients is not None else None
        if limit is not None:
            allowed = limit if allowed is None else allowed & limit
        if allowed is None or owner_in(conn, access.principal, res_type, res_id, resource, allowed):
            return True
    return False


def owner_in(conn, principal: Principal, res_type: str, res_id: str, resource: dict, patients: set) -> bool:
    def patient_of(reference) -> str | None:
        text = (reference or {}).get("reference") if isinstance(reference, dict) else None
        return text.split("/", 1)[1] if isinstance(text, str) and text.startswith("Patient/") else None
    if res_type == "Patient":
        return res_id in patients
    if res_type == "ImagingStudy":
        return patient_of(resource.get("subject")) in patients
    if res_type == "Task":
        if patient_of(resource.get("for")) in patients:
            return True
        focus = (resource.get("focus") or {}).get("reference", "")
        study = decide(principal, "r", "ImagingStudy")
        return focus.startswith("ImagingStudy/") and study.allowed and \
            reachable(conn, study, "ImagingStudy", focus.split("/", 1)[1])
    return reachable(conn, decide(principal, "r", res_type), res_type, res_id)  # Endpoint: as it is now


def readable(principal: Principal, res_type: str) -> list[Access]:
    """The accesses that let a resource of `res_type` be shown: read or search (for includes)."""
    return [a for a in (decide(principal, "r", res_type), decide(principal, "s", res_type)) if a.allowed]
