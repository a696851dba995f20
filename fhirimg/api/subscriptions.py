"""Subscriptions over REST: the topics (read and search), and $status and $events.

Subscription itself is an ordinary resource (rest.py); what is here is what R5 adds. The
shipped SubscriptionTopics are defined in code (subscriptions/topics.py) and are read-only.
``$events`` replays any range of a subscription's events still within the retention, as a
``subscription-notification`` Bundle of type ``query-event``, cut to what the caller may
read, at the payload level asked for (never more than the subscription's own).
"""
from __future__ import annotations

import uuid

from flask import Blueprint, Response, current_app, request
from sqlalchemy import select

from ..auth.decision import decide, require_resource
from ..errors import Invalid, MethodNotAllowed, NotFound
from ..store.records import format_instant
from ..store.schema import resource_current
from ..subscriptions import notify
from ..subscriptions.notify import Event
from ..subscriptions.schema import subscription_event, subscription_state
from ..subscriptions.topics import BY_ID, TOPICS
from ..subscriptions.validate import CONTENTS, content_of
from .access import current_principal
from .auditing import note
from .capability import operation_entries, register_operation, register_resource
from .negotiation import base_url, json_response

blueprint = Blueprint("subscriptions", __name__)
STATUS_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Subscription-status"
EVENTS_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Subscription-events"
register_operation("status", STATUS_DEFINITION, ["Subscription"],
                   "The subscription's status now: eventsSinceSubscriptionStart, status and the last error.")
register_operation("events", EVENTS_DEFINITION, ["Subscription"],
                   "Replay events eventsSinceNumber..eventsUntilNumber (inclusive) still within the retention "
                   "(subscriptions.retention_days), as a query-event notification Bundle.")
TOPIC_PARAMS = {"_id": "token", "url": "uri", "status": "token", "resource": "uri", "title": "string"}
LEVELS = {level: rank for rank, level in enumerate(CONTENTS)}


def topic_capability() -> dict:
    return {"type": "SubscriptionTopic", "profile": "http://hl7.org/fhir/StructureDefinition/SubscriptionTopic",
            "documentation": "The topics this server ships: " + "; ".join(f"{t.url} ({t.title})" for t in TOPICS),
            "interaction": [{"code": "read"}, {"code": "search-type"}], "versioning": "no-version",
            "readHistory": False, "updateCreate": False, "conditionalCreate": False, "conditionalUpdate": False,
            "conditionalDelete": "not-supported",
            "searchParam": [{"name": name, "type": kind} for name, kind in TOPIC_PARAMS.items()],
            "operation": operation_entries("SubscriptionTopic")}


register_resource("SubscriptionTopic", topic_capability)


def engine():
    return current_app.extensions["fhirimg.engine"]


# -- SubscriptionTopic -------------------------------------------------------------------
@blueprint.route("/SubscriptionTopic", methods=["GET"])
def search_topics() -> Response:
    return topic_searchset(list(request.args.items(multi=True)))


@blueprint.route("/SubscriptionTopic/_search", methods=["POST"])
def search_topics_post() -> Response:
    if request.mimetype != "application/x-www-form-urlencoded":
        raise Invalid("POST _search takes application/x-www-form-urlencoded parameters (http.html#search)")
    return topic_searchset(list(request.args.items(multi=True)) + list(request.form.items(multi=True)))


def topic_searchset(params: list[tuple[str, str]]) -> Response:
    decide(current_principal(), "s", "SubscriptionTopic").require()
    found = list(TOPICS)
    for name, value in params:
        if name.startswith("_") and name not in TOPIC_PARAMS and name in ("_count", "_format", "_pretty", "_summary",
                                                                          "_elements", "_total"):
            continue
        if name not in TOPIC_PARAMS:
            raise Invalid(f"SubscriptionTopic has no search parameter {name!r} (supported: "
                          f"{', '.join(TOPIC_PARAMS)})", [name], code="not-supported")
        wanted = value.split(",")
        found = [t for t in found if topic_value(t, name) is not None and
                 any(topic_matches(topic_value(t, name), name, w) for w in wanted)]
    base = base_url()
    bundle = {"resourceType": "Bundle", "type": "searchset", "total": len(found),
              "link": [{"relation": "self", "url": f"{base}/SubscriptionTopic"}],
              "entry": [{"fullUrl": f"{base}/SubscriptionTopic/{t.id}", "resource": t.to_resource(),
                         "search": {"mode": "match"}} for t in found]}
    note("search-type", query=request.query_string.decode("utf-8", "replace"), details={"searched": "SubscriptionTopic"})
    return json_response(bundle)


def topic_value(topic, name: str) -> str | None:
    return {"_id": topic.id, "url": topic.url, "status": "active", "title": topic.title,
            "resource": f"http://hl7.org/fhir/StructureDefinition/{topic.resource}"}.get(name)


def topic_matches(have: str, name: str, wanted: str) -> bool:
    if name == "title":
        return have.lower().startswith(wanted.lower())
    if name == "resource" and "/" not in wanted:
        return have.rsplit("/", 1)[-1] == wanted
    return have == wanted


@blueprint.route("/SubscriptionTopic/<res_id>", methods=["GET", "HEAD"])
def read_topic(res_id: str) -> Response:
    decide(current_principal(), "r", "SubscriptionTopic").require()
    topic = BY_ID.get(res_id)
    if topic is None:
        raise NotFound(f"SubscriptionTopic/{res_id[:64]} is not a topic of this server")
    note("read", resources=[f"SubscriptionTopic/{res_id}"])
    return json_response(topic.to_resource(), 200, {"ETag": 'W/"1"'})


@blueprint.route("/SubscriptionTopic", methods=["POST", "PUT", "PATCH", "DELETE"])
@blueprint.route("/SubscriptionTopic/<res_id>", methods=["POST", "PUT", "PATCH", "DELETE"])
def refuse_topic_write(res_id: str | None = None) -> Response:
    raise MethodNotAllowed("the SubscriptionTopics of this server are defined by the server and are read-only",
                           ["GET", "HEAD"])


# -- $status and $events ---------------------------------------------------------------
def readable_subscription(res_id: str):
    """The Subscription (403 unless the caller may read it) and its state row."""
    repo = current_app.extensions["fhirimg.repository"]
    with repo.reading() as uow:
        stored = uow.read("Subscription", res_id)
        if stored is None or stored.is_deleted:
            raise NotFound(f"Subscription/{res_id[:64]} is not known")
        require_resource(uow.conn, current_principal(), "r", "Subscription", res_id)  # its owner only
        state = uow.conn.execute(select(subscription_state).where(subscription_state.c.sub_id == res_id)).first()
    return stored, state


@blueprint.route("/Subscription/$status", methods=["GET", "POST"])
@blueprint.route("/Subscription/<res_id>/$status", methods=["GET", "POST"])
def status(res_id: str | None = None) -> Response:
    """R5 $status: a searchset Bundle of SubscriptionStatus (query-status), one per
    subscription - this one, or (type level) the caller's own, filtered by id and status."""
    repo = current_app.extensions["fhirimg.repository"]
    if res_id is not None:
        found = [(res_id, *readable_subscription(res_id))]
    else:
        params = list(request.args.items(multi=True)) + posted_parameters()
        ids = {v for k, v in params if k == "id"}
        statuses = {v for k, v in params if k == "status"}
        found = own_subscriptions(ids, statuses)
    entries = []
    for sub_id, stored, state in found:
        sub = stored.resource
        error = state.last_error if state is not None and sub.get("status") == "error" else None
        resource = notify.status_resource(sub_id, sub, state.events if state else 0, "query-status", error=error)
        entries.append({"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource, "search": {"mode": "match"}})
    body = {"resourceType": "Bundle", "type": "searchset", "timestamp": format_instant(repo.clock()),
            "total": len(entries), "entry": entries}
    note("operation", resources=[f"Subscription/{sub_id}" for sub_id, _, _ in found][:100],
         details={"operation": "Subscription/$status"})
    return json_response(body)


MAX_STATUS = 1000


def own_subscriptions(ids: set[str], statuses: set[str]) -> list:
    """(id, stored, state) of the caller's Subscriptions (all of them in anonymous mode)."""
    principal = current_principal()
    access = decide(principal, "r", "Subscription").require()
    repo = current_app.extensions["fhirimg.repository"]
    cur = resource_current
    query = select(cur.c.res_id).where(cur.c.res_type == "Subscription", cur.c.is_deleted.is_(False))
    condition = access.condition()
    if condition is not None:
        query = query.where(condition)
    if ids:
        query = query.where(cur.c.res_id.in_(sorted(ids)[:MAX_STATUS]))
    out = []
    with repo.reading() as uow:
        sub_ids = [row.res_id for row in uow.conn.execute(query.order_by(cur.c.res_id).limit(MAX_STATUS))]
        stored = uow.read_many("Subscription", sub_ids)
        states = {row.sub_id: row for row in uow.conn.execute(
            select(subscription_state).where(subscription_state.c.sub_id.in_(sub_ids)))} if sub_ids else {}
    for sub_id in sub_ids:
        version = stored.get(sub_id)
        if version is None or (statuses and version.resource.get("status") not in statuses):
            continue
        out.append((sub_id, version, states.get(sub_id)))
    return out


@blueprint.route("/Subscription/<res_id>/$events", methods=["GET", "POST"])
def events(res_id: str) -> Response:
    params = operation_parameters()
    stored, state = readable_subscription(res_id)
    sub = stored.resource
    total = state.events if state else 0
    rules = current_app.extensions["fhirimg.subscriptions"]
    limit = rules.settings.max_events_per_request
    since = integer_parameter(params, "eventsSinceNumber", 1)
    until = integer_parameter(params, "eventsUntilNumber", total)
    if until < since:
        raise Invalid("eventsUntilNumber is below eventsSinceNumber", ["eventsUntilNumber"])
    # The server may return fewer than asked (R5 $events): the first `limit` of the range;
    # the client asks again from the last eventNumber it got.
    until = min(until, since + limit - 1)
    level = params.get("content") or content_of(sub)
    if level not in LEVELS:
        raise Invalid(f"content must be one of {', '.join(CONTENTS)}", ["content"], code="value")
    if LEVELS[level] > LEVELS[content_of(sub)]:
        level = content_of(sub)  # a hint, never more than the subscription carries
    ev = subscription_event
    repo = current_app.extensions["fhirimg.repository"]
    with repo.reading() as uow:
        rows = uow.conn.execute(select(ev).where(ev.c.sub_id == res_id, ev.c.number >= since, ev.c.number <= until)
                                .order_by(ev.c.number)).all()
        found = [Event(r.number, r.seq, r.res_type, r.res_id, r.version, r.occurred_ms) for r in rows]
        body = notify.event_notification(uow.conn, res_id, sub, current_principal(), total, found, base_url(),
                                         repo.clock(), kind="query-event", content=level)
        patients = patients_of_events(uow.conn, found) if level != "empty" else []
    # As a search: one AuditEvent per patient whose data the answer carries (BALP PatientQuery).
    note("operation", resources=[f"Subscription/{res_id}"], patients=patients or [None],
         details={"operation": "Subscription/$events", "range": f"{since}-{until}", "returned": str(len(found))})
    return json_response(body)


def patients_of_events(conn, events: list[Event]) -> list[str]:
    """The patients of the events' versions (ImagingStudy.subject, Task.for, the Patient)."""
    import orjson

    from ..store.schema import resource_version as rv
    patients = set()
    for start in range(0, len(events), 500):
        seqs = [e.seq for e in events[start:start + 500]]
        for row in conn.execute(select(rv.c.res_type, rv.c.res_id, rv.c.content).where(rv.c.seq.in_(seqs))):
            if row.res_type == "Patient":
                patients.add(row.res_id)
                continue
            resource = orjson.loads(row.content) if row.content else {}
            ref = (resource.get("subject") or resource.get("for") or {}).get("reference") or ""
            if ref.startswith("Patient/"):
                patients.add(ref[8:])
    return sorted(patients)


def operation_parameters() -> dict[str, str]:
    """Parameters from the query, or a Parameters resource (POST)."""
    params = {k: v for k, v in request.args.items()}
    for name, value in posted_parameters():
        params[name] = value
    return params


def posted_parameters() -> list[tuple[str, str]]:
    """(name, value) of a POSTed Parameters resource's primitive parameters; 400 for a body
    that is not one."""
    if request.method != "POST" or not request.content_length:
        return []
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters" or \
            not isinstance(body.get("parameter", []), list):
        raise Invalid("the POST body must be a Parameters resource", ["Parameters"])
    out = []
    for i, p in enumerate(body.get("parameter") or []):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise Invalid("each parameter needs a name", [f"Parameters.parameter[{i}]"])
        value = next((v for k, v in p.items() if k.startswith("value")), None)
        if not isinstance(value, (str, int, bool)) or isinstance(value, bool):
            raise Invalid(f"parameter {p['name'][:64]!r} needs a primitive value", [f"Parameters.parameter[{i}]"])
        out.append((p["name"], str(value)))
    return out


def integer_parameter(params: dict, name: str, default: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not (str(text).isascii() and str(text).isdigit()) or len(str(text)) > 18:
        raise Invalid(f"{name} must be a non-negative integer", [name], code="value")
    return int(text)


# -- websocket binding ---------------------------------------------------------------------
WS_DEFINITION = "http://hl7.org/fhir/OperationDefinition/Subscription-get-ws-binding-token"
register_operation("get-ws-binding-token", WS_DEFINITION, ["Subscription"],
                   "A token to bind a websocket connection to one or more websocket Subscriptions "
                   "(send 'bind-with-token: <token>' to websocket-url).")
MAX_BINDINGS = 100


@blueprint.route("/Subscription/$get-ws-binding-token", methods=["GET", "POST"])
@blueprint.route("/Subscription/<res_id>/$get-ws-binding-token", methods=["GET", "POST"])
def ws_binding_token(res_id: str | None = None) -> Response:
    from ..subscriptions.validate import channel_code
    from ..subscriptions.websocket import issue_token, websocket_url
    ids = [res_id] if res_id else [v for k, v in request.args.items(multi=True) if k == "id"]
    ids += [value for name, value in posted_parameters() if name == "id"]
    ids = list(dict.fromkeys(i for i in ids if i))
    if not ids:
        raise Invalid("name the websocket Subscription(s): id (this server binds named subscriptions only)", ["id"])
    if len(ids) > MAX_BINDINGS:
        raise Invalid(f"at most {MAX_BINDINGS} subscriptions per token", ["id"], code="too-costly")
    for sub_id in ids:
        stored, _ = readable_subscription(sub_id)
        if channel_code(stored.resource) != "websocket":
            raise Invalid(f"Subscription/{sub_id} is not a websocket subscription (channelType "
                          f"{channel_code(stored.resource)})", ["id"], code="business-rule")
    rules = current_app.extensions["fhirimg.subscriptions"]
    repo = current_app.extensions["fhirimg.repository"]
    token, expires = issue_token(engine(), current_principal().client_id, ids, rules.settings.ws_token_seconds,
                                 repo.clock())
    parameters = [{"name": "token", "valueString": token}, {"name": "expiration", "valueDateTime": format_instant(expires)},
                  *({"name": "subscription", "valueString": sub_id} for sub_id in ids),
                  {"name": "websocket-url", "valueUrl": websocket_url(current_app.config["FHIRIMG"])}]
    note("operation", resources=[f"Subscription/{sub_id}" for sub_id in ids],
         details={"operation": "Subscription/$get-ws-binding-token"})
    response = json_response({"resourceType": "Parameters", "parameter": parameters})
    response.headers["Cache-Control"] = "no-store"
    return response
