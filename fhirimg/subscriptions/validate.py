"""What a Subscription must be before it is stored (422 naming the element, nothing written).

Two stages. ``content_issues`` is a pure function of the resource (the topic exists, the
filters are ones the topic declares, a channel we deliver, a payload we can produce, header
parameters that are headers); it runs wherever resources are validated, so a bad entry of a
transaction is named by its index. ``request_issues`` needs the server's configuration: the
endpoint must pass the same SSRF allow-list as transfers (resolved, link-local and metadata
addresses refused), and the heartbeat must not be shorter than the configured minimum.
``check_status_change`` is the rule on who sets ``status``: the server moves a subscription
to active or error; a client asks (requested), stops (off) or withdraws (entered-in-error).
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

from ..errors import Issue, Unprocessable
from .topics import BY_URL, topic_for

CHANNEL_SYSTEM = "http://terminology.hl7.org/CodeSystem/subscription-channel-type"
CHANNELS = ("rest-hook", "websocket")
CONTENTS = ("empty", "id-only", "full-resource")
CONTENT_TYPES = ("application/fhir+json", "application/json")
CLIENT_STATUSES = frozenset({"requested", "off", "entered-in-error"})
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,64}\Z")
HEADER_VALUE = re.compile(r"^[\x20-\x7e\t]*\Z")  # RFC 9110 field-vchar and SP/HTAB, ASCII only
# Headers the delivery itself sets, or that would change how the request is framed or routed.
RESERVED_HEADERS = frozenset({"host", "content-length", "content-type", "transfer-encoding", "connection",
                              "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "expect"})
MAX_FILTERS = 20
MAX_FILTER_VALUE = 1000
MAX_PARAMETERS = 20
MAX_HEADER_VALUE = 4096
MAX_ENDPOINT = 2000


def channel_code(subscription: dict) -> str | None:
    channel = subscription.get("channelType")
    return channel.get("code") if isinstance(channel, dict) else None


def content_of(subscription: dict) -> str:
    return subscription.get("content") or "id-only"


def content_issues(sub: dict) -> list[Issue]:
    issues: list[Issue] = []
    topic = topic_for(sub.get("topic"))
    if topic is None:
        issues.append(Issue("not-supported", f"topic {str(sub.get('topic'))[:200]!r} is not a topic of this server "
                            f"(see SubscriptionTopic; known: {', '.join(sorted(BY_URL))})", ["Subscription.topic"]))
    issues += channel_issues(sub)
    if sub.get("content") is not None and sub["content"] not in CONTENTS:
        issues.append(Issue("code-invalid", f"content must be one of {', '.join(CONTENTS)}", ["Subscription.content"]))
    if sub.get("contentType") is not None and sub["contentType"].split(";")[0].strip() not in CONTENT_TYPES:
        issues.append(Issue("not-supported", "notifications are sent as application/fhir+json only",
                            ["Subscription.contentType"]))
    timeout = sub.get("timeout")
    if timeout is not None and not 1 <= timeout <= 300:
        issues.append(Issue("value", "timeout must be 1-300 seconds", ["Subscription.timeout"]))
    if sub.get("heartbeatPeriod") is not None and sub["heartbeatPeriod"] > 86_400:
        issues.append(Issue("value", "heartbeatPeriod must be at most 86400 seconds", ["Subscription.heartbeatPeriod"]))
    if topic is not None:
        issues += filter_issues(sub, topic)
    issues += parameter_issues(sub)
    return issues


def channel_issues(sub: dict) -> list[Issue]:
    channel = sub.get("channelType") or {}
    code = channel.get("code")
    if channel.get("system") not in (None, CHANNEL_SYSTEM) or code not in CHANNELS:
        return [Issue("not-supported", f"channelType {channel.get('system') or ''}|{code or ''} is not delivered "
                      f"here (supported: {', '.join(CHANNELS)} in {CHANNEL_SYSTEM})", ["Subscription.channelType"])]
    endpoint = sub.get("endpoint")
    if code == "websocket":
        return []  # the client connects to us; an endpoint, if given, is not used
    if not endpoint:
        return [Issue("required", "a rest-hook subscription needs an endpoint (the URL notifications are POSTed to)",
                      ["Subscription.endpoint"])]
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(endpoint) > MAX_ENDPOINT:
        return [Issue("value", f"endpoint must be an absolute http(s) URL of at most {MAX_ENDPOINT} characters",
                      ["Subscription.endpoint"])]
    if parts.username or parts.password:
        return [Issue("value", "endpoint must not carry credentials; send them as a header parameter",
                      ["Subscription.endpoint"])]
    return []


def filter_issues(sub: dict, topic) -> list[Issue]:
    issues = []
    filters = sub.get("filterBy") or []
    if len(filters) > MAX_FILTERS:
        return [Issue("too-costly", f"at most {MAX_FILTERS} filterBy", ["Subscription.filterBy"])]
    for i, flt in enumerate(filters):
        path = f"Subscription.filterBy[{i}]"
        if flt.get("resourceType") not in (None, topic.resource):
            issues.append(Issue("value", f"topic {topic.id} is about {topic.resource}, not {flt['resourceType']}",
                                [f"{path}.resourceType"]))
            continue
        declared = topic.filter(flt.get("filterParameter"))
        if declared is None:
            issues.append(Issue("not-supported", f"topic {topic.id} cannot filter by {flt.get('filterParameter')!r} "
                                f"(canFilterBy: {', '.join(f.parameter for f in topic.filters)})",
                                [f"{path}.filterParameter"]))
            continue
        if flt.get("comparator") not in (None, *declared.comparators):
            issues.append(Issue("not-supported", f"comparator {flt['comparator']!r} is not offered for "
                                f"{declared.parameter} (offered: {', '.join(declared.comparators)})",
                                [f"{path}.comparator"]))
        if flt.get("modifier") not in (None, *declared.modifiers):
            issues.append(Issue("not-supported", f"modifier {flt['modifier']!r} is not offered for "
                                f"{declared.parameter}", [f"{path}.modifier"]))
        value = flt.get("value") or ""
        if len(value) > MAX_FILTER_VALUE or value.count(",") >= MAX_FILTERS:
            issues.append(Issue("too-costly", f"a filter value is at most {MAX_FILTER_VALUE} characters and "
                                f"{MAX_FILTERS} alternatives", [f"{path}.value"]))
    return issues


def parameter_issues(sub: dict) -> list[Issue]:
    params = sub.get("parameter") or []
    if len(params) > MAX_PARAMETERS:
        return [Issue("too-costly", f"at most {MAX_PARAMETERS} parameters", ["Subscription.parameter"])]
    issues = []
    for i, param in enumerate(params):
        name, value = param.get("name") or "", param.get("value") or ""
        path = f"Subscription.parameter[{i}]"
        if not HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
            issues.append(Issue("value", f"parameter name {name[:64]!r} is not an HTTP header a notification may carry",
                                [f"{path}.name"]))
        if len(value) > MAX_HEADER_VALUE or not HEADER_VALUE.match(value):
            issues.append(Issue("value", f"a header value is at most {MAX_HEADER_VALUE} visible ASCII characters "
                                "(and spaces) on one line", [f"{path}.value"]))
    return issues


def request_issues(sub: dict, policy, min_heartbeat: int) -> list[Issue]:
    """The checks that need this server's configuration (`policy`: the transfer allow-list)."""
    from ..transfer.netpolicy import HostRefused
    issues = []
    if channel_code(sub) == "rest-hook" and sub.get("endpoint"):
        try:
            policy.check_url(sub["endpoint"])
        except HostRefused as exc:
            issues.append(Issue("security", f"endpoint refused: {exc}", ["Subscription.endpoint"]))
    beat = sub.get("heartbeatPeriod")
    if beat is not None and beat < min_heartbeat:
        issues.append(Issue("value", f"heartbeatPeriod must be at least {min_heartbeat} seconds",
                            ["Subscription.heartbeatPeriod"]))
    return issues


def check_status_change(previous: dict | None, current: dict) -> None:
    """A client may not set active or error: those say what the server has seen."""
    status = current.get("status")
    before = (previous or {}).get("status")
    if status in CLIENT_STATUSES or status == before:
        return
    raise Unprocessable(f"status {status!r} is set by the server (a client may ask for requested, off or "
                        "entered-in-error)", code="business-rule", expression=["Subscription.status"])


def configured_issues(sub: dict) -> list[Issue]:
    """``request_issues`` with the running app's settings; outside an app (a worker writing a
    status change) there is nothing configured to check against."""
    from flask import current_app, has_app_context
    if not has_app_context():
        return []
    rules = current_app.extensions.get("fhirimg.subscriptions")
    return request_issues(sub, rules.policy, rules.settings.min_heartbeat) if rules else []
