"""Subscriptions over REST: the topics (read and search), and $status and $events.

Subscription itself is an ordinary resource (rest.py); what is here is what R5 adds. The
shipped SubscriptionTopics are defined in code (subscriptions/topics.py) and are read-only.
``$events`` replays any range of a subscription's events still within the retention, as a
``subscription-notification`` Bundle of type ``query-event``, cut to what the caller may
read, at the payload level asked for (never more than the subscription's own).
"""
from __future__ import annotations

from flask import Blueprint, Response, current_app, request
from sqlalchemy import select

from ..auth.decision import decide, require_resource
from ..errors import Invalid, MethodNotAllowed, NotFound
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
        state = uow.conn.execute(select(subscription_state).where(subscription_state.c.sub_id == res_id)).first()
        principal = current_principal()
        decide(principal, "r", "Subscription").require()
        if state is None or state.client_id != principal.client_id:  # its own client may always ask
            require_resource(uow.conn, principal, "r", "Subscription", res_id)
    return stored, state


@blueprint.route("/Subscription/<res_id>/$status", methods=["GET", "POST"])
def status(res_id: str) -> Response:
    stored, state = readable_subscription(res_id)
    events = state.events if state else 0
    sub = stored.resource
    error = state.last_error if state is not None and sub.get("status") == "error" else None
    body = notify.bundle(notify.status_resource(res_id, sub, events, "query-status", error=error),
                         now_ms=current_app.extensions["fhirimg.repository"].clock())
    note("operation", resources=[f"Subscription/{res_id}"], details={"operation": "Subscription/$status"})
    return json_response(body)


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
    if until - since + 1 > limit:
        raise Invalid(f"at most {limit} events per request (subscriptions.max_events_per_request); ask for a "
                      "smaller range", ["eventsUntilNumber"], code="too-costly")
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
    note("operation", resources=[f"Subscription/{res_id}"],
         details={"operation": "Subscription/$events", "range": f"{since}-{until}", "returned": str(len(found))})
    return json_response(body)


def operation_parameters() -> dict[str, str]:
    """Parameters from the query, or a Parameters resource (POST)."""
    params = {k: v for k, v in request.args.items()}
    if request.method == "POST" and request.content_length:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise Invalid("POST $events takes a Parameters resource", ["Parameters"])
        for p in body.get("parameter") or []:
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if isinstance(p.get("name"), str) and value is not None:
                params[p["name"]] = str(value)
    return params


def integer_parameter(params: dict, name: str, default: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    if not str(text).isdigit() or len(str(text)) > 18:
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
    if request.method == "POST" and request.content_length:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise Invalid("POST $get-ws-binding-token takes a Parameters resource", ["Parameters"])
        ids += [p.get("valueId") or p.get("valueString") for p in body.get("parameter") or [] if p.get("name") == "id"]
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
    from ..store.records import format_instant
    parameters = [{"name": "token", "valueString": token}, {"name": "expiration", "valueDateTime": format_instant(expires)},
                  *({"name": "subscription", "valueString": sub_id} for sub_id in ids),
                  {"name": "websocket-url", "valueUrl": websocket_url(current_app.config["FHIRIMG"])}]
    note("operation", resources=[f"Subscription/{sub_id}" for sub_id in ids],
         details={"operation": "Subscription/$get-ws-binding-token"})
    response = json_response({"resourceType": "Parameters", "parameter": parameters})
    response.headers["Cache-Control"] = "no-store"
    return response
