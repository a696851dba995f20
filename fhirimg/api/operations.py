"""``POST [base]/ImagingStudy/{id}/$retrieve``: start (or find) the retrieve Task, 202 Accepted.

FHIR's asynchronous pattern: the answer is ``202`` with ``Content-Location`` naming a
Task, which the client polls (and may cancel with status=cancelled). The Task is
committed before the RQ job is enqueued, so a Redis outage never loses the request:
the workers' reconciler enqueues it later.
"""
from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, request
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError

from ..auth.decision import decide, require_resource
from ..auth.writes import WriteGuard
from ..errors import Invalid, Unprocessable, UnsupportedMediaType
from ..transfer.jobs import enqueue_retrieve
from ..transfer.settings import PRIORITIES, own_dicomweb_base, transfer_section
from ..transfer.sources import TaskFailure, check_retrievable
from ..transfer.tasks import start_retrieve
from .access import current_principal
from .auditing import audited_transaction, note, raw_query
from ..audit.writes import patient_of
from .capability import register_operation
from .negotiation import base_url, json_response, media_type, parse_json, read_bounded_body

log = logging.getLogger("fhirimg.api")
blueprint = Blueprint("operations", __name__)
RETRIEVE_DEFINITION = "http://fhirimg.org/fhir/OperationDefinition/ImagingStudy-retrieve"

register_operation("retrieve", RETRIEVE_DEFINITION, ["ImagingStudy"],
                   "Fetch the study's DICOM instances from its Endpoint into fhirimg (asynchronous: "
                   "202 + Content-Location of a Task; parameter priority = routine | urgent | asap | stat).")


@blueprint.route("/ImagingStudy/<res_id>/$retrieve", methods=["POST"])
def retrieve(res_id: str) -> Response:
    # Starting a retrieval creates a Task about the study: write on Task, read on the study.
    principal = current_principal()
    decide(principal, "c", "Task").require()
    priority = requested_priority()
    repo = current_app.extensions["fhirimg.repository"]
    for attempt in range(2):
        try:
            with audited_transaction(repo, WriteGuard(principal)) as uow:
                require_resource(uow.conn, principal, "r", "ImagingStudy", res_id)  # 403 for unknown ids too
                require_retrievable(uow, res_id)
                task, created = start_retrieve(uow, res_id, priority, repo.clock())
                study = uow.read("ImagingStudy", res_id)
            break
        except IntegrityError:
            if attempt:  # a concurrent $retrieve won the active_retrieve row twice: give up
                raise
    note("operation", resources=[f"ImagingStudy/{res_id}", f"Task/{task.res_id}"],
         patients=[patient_of("ImagingStudy", res_id, study.resource)], query=raw_query(),
         details={"operation": "$retrieve", "priority": priority})
    if created:
        enqueue_or_defer(repo, task.res_id, priority)
    headers = {"Content-Location": f"{base_url()}/Task/{task.res_id}", "ETag": task.etag}
    return json_response(task.resource, 202, headers)


def require_retrievable(uow, study_id: str) -> None:
    """422 at once for a study that names nothing to fetch from (rather than a failed Task later)."""
    stored = uow.read("ImagingStudy", study_id)
    if stored is None or stored.is_deleted:
        return  # start_retrieve answers 404
    try:
        check_retrievable(uow, stored.resource, own_dicomweb_base(current_app.config["FHIRIMG"]))
    except TaskFailure as exc:
        where = "ImagingStudy.identifier" if "Instance UID" in str(exc) else "ImagingStudy.endpoint"
        raise Unprocessable(str(exc), [where]) from None


def requested_priority() -> str:
    """``priority`` from a Parameters body (valueCode) or the query; default routine."""
    priority = request.args.get("priority")
    if priority is not None and priority not in PRIORITIES:
        raise Invalid(f"priority {priority!r} must be one of {', '.join(PRIORITIES)}", ["priority"])
    data = read_bounded_body()
    if not data.strip():
        return priority or "routine"
    if media_type(request.headers.get("Content-Type")) not in ("application/fhir+json", "application/json"):
        raise UnsupportedMediaType("the $retrieve body must be a Parameters resource in application/fhir+json")
    body = parse_json(data)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise Invalid("the $retrieve body must be a Parameters resource", ["Parameters"])
    for index, parameter in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(parameter, dict) or parameter.get("name") != "priority":
            name = parameter.get("name") if isinstance(parameter, dict) else None
            raise Invalid(f"unknown $retrieve parameter {name!r} (known: priority)", [f"{where}.name"])
        value = parameter.get("valueCode")
        if value not in PRIORITIES:
            raise Invalid(f"priority {value!r} must be one of {', '.join(PRIORITIES)}", [f"{where}.valueCode"])
        priority = value
    return priority or "routine"


def app_redis() -> Redis:
    """The app's one Redis connection (redis_url), made on first use with short timeouts."""
    connection = current_app.extensions.get("fhirimg.redis")
    if connection is None:
        connection = current_app.extensions.setdefault("fhirimg.redis", Redis.from_url(
            current_app.config["FHIRIMG"]["redis_url"], socket_connect_timeout=2, socket_timeout=5))
    return connection


def enqueue_or_defer(repo, task_id: str, priority: str) -> None:
    config = current_app.config["FHIRIMG"]
    if not config.get("redis_url"):
        log.info("Task/%s stored; no redis_url configured, a worker's reconciler will enqueue it", task_id)
        return
    try:
        enqueue_retrieve(app_redis(), transfer_section(config), repo, task_id, priority)
    except RedisError as exc:
        log.warning("Task/%s stored but not enqueued (Redis: %s); the reconciler will enqueue it", task_id, exc)
