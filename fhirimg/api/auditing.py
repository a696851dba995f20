"""HTTP side of the audit trail: what each request did, recorded before it is answered.

Writes are recorded by the unit of work, in the transaction that writes them (the actor
made here names the client). Everything else a request does - reads, searches, history,
DICOMweb, $retrieve, token requests - is handed to the process's group committer by its view
as it notes it (``note``), so that it commits while the answer is built; refusals, failures
and writes that wrote nothing are noted by ``finish`` (after_request), which then waits for
every event of the request to be durable before the first byte goes out. If they cannot be
made durable the client gets a 503, not the data.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import Flask, Response, current_app, g, request

from ..audit.committer import AuditUnavailable, GroupCommitter
from ..audit.events import Actor, event_rows
from ..audit.fold import FOLD_AT
from ..audit.writes import patient_of
from ..resources import is_valid_id

# Flask endpoint -> the interaction a request to it is (when its view noted nothing itself).
ENDPOINTS = {
    "rest.create": "create", "rest.conditional_update": "update", "rest.conditional_delete": "delete",
    "rest.conditional_patch": "patch", "rest.read": "read", "rest.update": "update", "rest.patch": "patch",
    "rest.delete": "delete", "rest.vread": "vread", "rest.vread_other_methods": "vread",
    "search.search_type": "search-type", "search.search_type_post": "search-type",
    "search.search_system": "search-system", "history.history_system": "history-system",
    "history.history_type": "history-type", "history.history_instance": "history-instance",
    "operations.retrieve": "operation", "bundle.transaction_or_batch": "transaction", "access.token": "login",
    "auditevent.read": "read", "auditevent.search": "search-type", "auditevent.search_post": "search-type",
    "auditevent.verify": "operation", "auditevent.refuse": "create", "stow.store_instances": "create",
    "subscriptions.search_topics": "search-type", "subscriptions.search_topics_post": "search-type",
    "subscriptions.read_topic": "read", "subscriptions.status": "operation", "subscriptions.events": "operation",
    "subscriptions.refuse_topic_write": "create", "subscriptions.ws_binding_token": "operation",
}
WRITES = {"create", "update", "patch", "delete"}
# Public documents with no patient data: not audited.
UNAUDITED = {"capability.metadata", "access.smart_config", "access.jwks", "static"}


@dataclass
class Note:
    interaction: str
    patients: list[str | None] = field(default_factory=lambda: [None])
    resources: list[str] = field(default_factory=list)
    query: str | None = None
    details: dict[str, str] = field(default_factory=dict)
    status: int | None = None  # its own (a Bundle entry's); else the response's
    reason: str | None = None


def note(interaction: str, *, resources=(), patients=(None,), query: str | None = None,
         details: dict | None = None, status: int | None = None, reason: str | None = None) -> None:
    """What the current request did: its events (one per patient) go to the committer now,
    so that they commit while the view builds its answer; ``finish`` waits for them."""
    item = Note(interaction, list(patients) or [None], list(resources), query, dict(details or {}), status, reason)
    g.setdefault("audit_notes", []).append(item)
    if is_audited():  # (AuditUnavailable, on SQLite, is a 503 like any FhirError)
        g.setdefault("audit_tickets", []).append(committer().submit(rows_of([item], item.status or 200)))


def note_read(interaction: str, stored) -> None:
    note(interaction, resources=[stored.location],
         patients=[patient_of(stored.res_type, stored.res_id, stored.resource)])


def patients_of(resources) -> list[str | None]:
    """The patients a set of returned resources concern (BALP: one event per patient)."""
    found = {patient_of(r.get("resourceType", ""), r.get("id", ""), r) for r in resources if isinstance(r, dict)}
    return sorted(p for p in found if p) or [None]


def bundle_resources(bundle: dict) -> list[dict]:
    return [e["resource"] for e in bundle.get("entry") or [] if isinstance(e.get("resource"), dict)]


def note_query(interaction: str, bundle: dict, query: str | None = None) -> None:
    """A search or history page: the raw query, one event per patient in what it returned."""
    note(interaction, patients=patients_of(bundle_resources(bundle)), query=raw_query() if query is None else query)


def raw_query() -> str:
    """The request's query as sent, and a POSTed search's form body (BALP: base64 of the raw request)."""
    query = request.query_string.decode("utf-8", "replace")
    if request.method == "POST" and request.mimetype == "application/x-www-form-urlencoded":
        body = request.get_data(cache=True).decode("utf-8", "replace")
        query = "&".join(part for part in (query, body) if part)
    return query


def request_actor() -> Actor:
    principal = g.get("principal")
    site = current_app.extensions["fhirimg.site"]
    network = request.remote_addr
    if principal is None:  # refused before authentication, or the token endpoint
        return Actor(claimed_client(), site, network, g.get("request_id"))
    return Actor(principal.client_id, site, network, g.get("request_id"), principal.token_id, principal.fhir_user)


def claimed_client() -> str:
    """Who a request without a verified token says it is (token requests name a client_id)."""
    if request.endpoint == "access.token":
        claimed = request.form.get("client_id") or unverified_issuer(request.form.get("client_assertion"))
        if claimed:
            return f"unverified:{claimed[:100]}"
    return "unauthenticated"


def unverified_issuer(assertion: str | None) -> str | None:
    try:
        import jwt
        return str(jwt.decode(assertion, options={"verify_signature": False}).get("iss") or "") or None
    except Exception:  # noqa: BLE001 - a malformed assertion names nobody
        return None


@contextmanager
def audited_transaction(repo, guard):
    """``repo.transaction`` for a request: its writes name the request's client, and the unit of
    work is remembered, so ``finish`` knows whether the writes were recorded there."""
    with repo.transaction(guard=guard, actor=request_actor()) as uow:
        g.setdefault("audit_units", []).append(uow)
        yield uow


def recorded_elsewhere() -> None:
    """The view's act was recorded in the transaction that did it (a STOW-RS store): nothing
    more is noted for a success."""
    g.audit_recorded = True


def wrote_versions() -> bool:
    return any(uow.written for uow in g.get("audit_units", ()))


def default_note(status: int) -> Note | None:
    """A request whose view noted nothing: a refusal or failure, or a write that wrote nothing."""
    interaction = ENDPOINTS.get(request.endpoint or "")
    if interaction is None:
        return Note("operation") if status in (401, 403) else None
    if status < 400 and (interaction not in WRITES or wrote_versions() or g.get("audit_recorded")):
        return None  # recorded with the version it wrote (or a view that chose to note nothing)
    args = request.view_args or {}
    resources = [f"{args['res_type']}/{args['res_id']}"] if "res_type" in args and "res_id" in args else []
    query = raw_query() if interaction.startswith(("search", "history")) or not resources else None
    patients = [args["res_id"]] if args.get("res_type") == "Patient" and is_valid_id(args.get("res_id", "")) else [None]
    return Note(interaction, resources=resources, query=query, patients=patients)


def is_audited() -> bool:
    return request.endpoint not in UNAUDITED and request.method != "OPTIONS" and \
        current_app.config["FHIRIMG"]["audit"]["enabled"]


def rows_of(notes: list[Note], status: int) -> list:
    actor = request_actor()
    now = current_app.extensions["fhirimg.repository"].clock()
    rows = []
    for item in notes:
        act = actor.act(item.interaction, now, status=item.status or status, resources=item.resources,
                        query=item.query, details=item.details,
                        reason=item.reason or (g.get("audit_reason") if status >= 400 else None))
        rows += event_rows(act, item.patients)
    return rows


def finish(response: Response) -> Response:
    """Before the first byte: a request whose view noted nothing (a refusal, a failure, a write
    that wrote nothing) is noted here; then every event of the request must be durable, or
    the answer is a 503. A request that failed after its view noted what it did records the
    failure as well."""
    if not is_audited():
        return response
    gc = committer()
    status = response.status_code
    tickets = g.get("audit_tickets", [])
    try:
        fallback = None if status < 400 and g.get("audit_notes") else default_note(status)
        if fallback is not None:
            tickets.append(gc.submit(rows_of([fallback], status)))
        for ticket in tickets:
            gc.wait(ticket)
    except AuditUnavailable as error:
        gc.kick()  # this request's later events, if its wait gave up before they were sent
        from .negotiation import error_response
        return error_response(error)
    if gc.pipelined:
        gc.counted(sum(len(uow.written) for uow in g.get("audit_units", ())))
        if gc.since_fold >= FOLD_AT:  # the search values this process left behind, once the answer is out
            response.call_on_close(gc.fold_if_due)
    return response


def committer() -> GroupCommitter:
    return current_app.extensions["fhirimg.audit"]


def register_auditing(app: Flask, engine) -> None:
    settings = app.config["FHIRIMG"]["audit"]
    app.extensions["fhirimg.audit"] = GroupCommitter(engine, settings["max_batch"], settings["commit_timeout"])
    app.after_request(finish)

