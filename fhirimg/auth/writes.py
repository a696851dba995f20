"""The write side of the one decision: a guard on the unit of work.

It sees every change before it is made (the resource as it was must be reachable, even
when the new content turns out unchanged), the matches of every conditional operation (a
match the token cannot see does not exist for it), and every version before commit (the
resource as written must be reachable, and may point only at what the token reaches).
Shared resources stay shared: a narrowed token never changes an Endpoint.
"""
from __future__ import annotations

from sqlalchemy import or_, select

from ..search.tables import search_token
from ..transfer.schema import dicom_instance
from ..transfer.taskrules import check_client_task_change
from .decision import LETTER_NAMES, METHOD_LETTERS, decide, reachable, reachable_ids, require_resource
from .errors import Forbidden
from .imaging import DICOM_UID_SYSTEM, OID_PREFIX
from .principal import Principal

# References a narrowed write may make only to what the token reaches (Endpoints are shared
# infrastructure: any study may name the archive's Endpoint).
GUARDED_TARGETS = ("Patient", "ImagingStudy", "Task")


class WriteGuard:
    def __init__(self, principal: Principal, subscriptions=None):
        self.principal = principal
        # subscriptions.SubscriptionRules of the app: a Subscription written here gets its
        # state (who it acts for) in the same transaction; None where none can be written.
        self.subscriptions = subscriptions

    def before_change(self, uow, res_type: str, res_id: str, letter: str) -> None:
        access = require_resource(uow.conn, self.principal, letter, res_type, res_id)
        if res_type == "Endpoint" and access.is_narrowed:
            # Named by many patients' studies: changing it would change what theirs point at.
            raise Forbidden(f"Endpoint/{res_id} is shared by studies; changing or deleting an Endpoint needs "
                            f"unrestricted access (e.g. system/Endpoint.{letter})")

    def before_reveal(self, uow, res_type: str, res_id: str) -> None:
        """A conditional create that matched answers with the existing resource: that is a read."""
        require_resource(uow.conn, self.principal, "r", res_type, res_id)

    def check_criteria(self, res_type: str, criteria: list[tuple[str, str]]) -> None:
        refuse_chains(self.principal, res_type, criteria)

    def visible_ids(self, uow, res_type: str, ids: list[str]) -> set[str]:
        """Of a conditional operation's matches, those the token may read or search. A token
        with no read or search of the type at all (a push client with system/*.cu) matches
        as its write access allows."""
        seeing = [a for a in (decide(self.principal, letter, res_type) for letter in "rs") if a.allowed]
        if not seeing:
            seeing = [a for a in (decide(self.principal, letter, res_type) for letter in "cud") if a.allowed]
        if any(not a.is_narrowed for a in seeing):
            return set(ids)
        out: set[str] = set()
        for access in seeing:
            out |= reachable_ids(uow.conn, access, res_type, [i for i in ids if i not in out])
        return out

    def before_commit(self, uow) -> None:
        for stored in uow.written:
            if stored.res_type == "Task" and not stored.created:  # the worker's writes have no guard
                check_client_task_change(stored.res_id, uow.previous.get(("Task", stored.res_id)), stored.resource)
            if stored.res_type == "Subscription":
                self.subscription_written(uow, stored)
            letter = METHOD_LETTERS.get(stored.method, "u")
            access = decide(self.principal, letter, stored.res_type).require()
            if stored.is_deleted or not access.is_narrowed or stored.res_type == "Subscription":
                continue  # a Subscription is its client's, in no patient's compartment (grants.py)
            if not reachable(uow.conn, access, stored.res_type, stored.res_id):
                raise Forbidden(f"the {stored.res_type} written would be outside what the token may "
                                f"{LETTER_NAMES[letter]} (its patient compartment or scope criteria)",
                                resource=(stored.res_type, stored.res_id))
            self.check_references(uow, stored)
            if stored.res_type == "ImagingStudy":
                self.check_study_uids(uow, stored)

    def subscription_written(self, uow, stored) -> None:
        from ..subscriptions.rules import app_rules
        from ..subscriptions.writes import subscription_written
        rules = self.subscriptions or app_rules()
        limit = rules.settings.max_subscriptions if rules else 10_000
        subscription_written(uow, stored, self.principal, limit)

    def check_references(self, uow, stored) -> None:
        """A narrowed write may point only at patients, studies and Tasks the token reaches:
        a Task for another patient, or about another patient's study, would put itself into
        that patient's record."""
        written = {(v.res_type, v.res_id) for v in uow.written}
        for res_type, res_id in references(stored.resource):
            if res_type not in GUARDED_TARGETS or (res_type, res_id) in written:
                continue
            if not any(reachable(uow.conn, a, res_type, res_id) for a in
                       (decide(self.principal, letter, res_type) for letter in "rs") if a.allowed):
                raise Forbidden(f"the {stored.res_type} written refers to {res_type}/{res_id}, which the token "
                                "may not read", resource=(stored.res_type, stored.res_id))

    def check_study_uids(self, uow, stored) -> None:
        """The Study Instance UID opens the study's images (auth/imaging.py): a narrowed token
        may name one only if no ImagingStudy out of its reach names it, and - if images of it
        are stored - if this study or one it reaches named it already."""
        access = decide(self.principal, "r", "ImagingStudy")
        for uid in study_uids(stored.resource):
            named = set(studies_naming(uow.conn, uid)) - {stored.res_id}
            if named - (reachable_ids(uow.conn, access, "ImagingStudy", sorted(named)) if access.allowed else set()):
                raise Forbidden(f"Study Instance UID {uid} is named by an ImagingStudy the token may not read",
                                resource=(stored.res_type, stored.res_id))
            if not named and not self.named_before(uow, stored, uid) and images_stored(uow.conn, uid):
                raise Forbidden(f"images of Study Instance UID {uid} are held for another ImagingStudy; a "
                                "narrowed token cannot claim them", resource=(stored.res_type, stored.res_id))

    @staticmethod
    def named_before(uow, stored, uid: str) -> bool:
        if stored.version <= 1:
            return False
        previous = uow.vread(stored.res_type, stored.res_id, stored.version - 1)
        return previous is not None and previous.resource is not None and uid in study_uids(previous.resource)


def refuse_chains(principal: Principal, res_type: str, criteria: list[tuple[str, str]]) -> None:
    """Chained parameters and _has search the chained resources unnarrowed (`Patient?link:
    Patient.birthdate=...` tests a linked patient's birth date), so a narrowed token may not use them."""
    chained = [name for name, _ in criteria if "." in name or name.startswith("_has:")]
    if chained and any(decide(principal, letter, res_type).is_narrowed
                       for letter in "rs" if decide(principal, letter, res_type).allowed):
        raise Forbidden(f"chained search parameters ({', '.join(chained)}) are not available to a token limited "
                        "to some patients or by scope criteria", chained)


def references(resource: dict | None):
    """("Type", "id") of every relative reference in a resource."""
    stack = [resource] if resource else []
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            value = node.get("reference")
            if isinstance(value, str) and value.count("/") == 1 and value[:1].isupper():
                yield tuple(value.split("/", 1))
            stack.extend(v for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend(node)


def study_uids(resource: dict | None) -> set[str]:
    """The Study Instance UIDs an ImagingStudy names, in either form (``urn:oid:1.2`` or ``1.2``)."""
    out = set()
    for identifier in (resource or {}).get("identifier") or []:
        value = identifier.get("value") if isinstance(identifier, dict) else None
        if isinstance(identifier, dict) and identifier.get("system") == DICOM_UID_SYSTEM and isinstance(value, str):
            out.add(value[len(OID_PREFIX):] if value.startswith(OID_PREFIX) else value)
    return out


def studies_naming(conn, uid: str) -> list[str]:
    tok = search_token
    return [row.res_id for row in conn.execute(select(tok.c.res_id).where(
        tok.c.res_type == "ImagingStudy", tok.c.param == "identifier", tok.c.system == DICOM_UID_SYSTEM,
        or_(tok.c.code == OID_PREFIX + uid, tok.c.code == uid)))]


def images_stored(conn, uid: str) -> bool:
    return conn.execute(select(dicom_instance.c.sop_uid).where(dicom_instance.c.study_uid == uid).limit(1)).first() \
        is not None
