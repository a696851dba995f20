"""/console: the page (public, it holds no data) and the JSON the page needs besides FHIR."""
from __future__ import annotations

from contextlib import contextmanager

from flask import Blueprint, Response, current_app, render_template, request

from ..auth.context import server_root
from ..auth.decision import decide
from ..errors import FhirError
from ..resources import SUPPORTED_TYPES
from ..api.access import auth_context, current_principal, public_base
from ..api.negotiation import dumps
from ..api.operations import app_redis
from . import status

blueprint = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
                      static_folder="static", static_url_path="/static")
CLIENT_ID = "fhirimg-console"
SCOPES = "openid fhirUser online_access user/*.rs user/Task.cu"  # online_access: refreshed, not re-asked
# The page runs only its own script, sends its code only to this origin, and is never framed.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


@blueprint.route("", methods=["GET"], strict_slashes=False)
@blueprint.route("/callback", methods=["GET"])
def page() -> Response:
    root = server_root(public_base())
    html = render_template("console.html", fhir_base=public_base(), authorize_url=root + "/auth/authorize",
                           token_url=root + "/auth/token", redirect_uri=root + "/console/callback",
                           client_id=CLIENT_ID, scopes=SCOPES, auth_enabled=auth_context().enabled,
                           viewer_template=viewer_template())
    return Response(html, 200, content_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


def viewer_template() -> str:
    """Where a study opens: fhirimg's own /viewer when `make viewer` installed it, else
    viewer.url_template (with {StudyInstanceUID}), else nowhere."""
    from ..viewer import viewer_url_template
    return viewer_url_template(current_app.config["FHIRIMG"])


@blueprint.route("/api/workers", methods=["GET"])
def workers() -> Response:
    """RQ workers and queues: operators who may search Tasks may see what runs them."""
    decide(current_principal(), "s", "Task").require()
    config = current_app.config["FHIRIMG"]
    if not config.get("redis_url"):
        return json_answer({"redis": "not configured", "queues": [], "workers": []})
    with redis_or_503() as connection:
        body = status.queues_and_workers(connection, status.queue_names(config))
    return json_answer({"redis": "up", **body})


@blueprint.route("/api/transfers/<task_id>", methods=["GET"])
def transfer_progress(task_id: str) -> Response:
    """A running transfer's live progress (steps, bytes, samples): who may read the Task may
    see it. 404 when nothing is running or no worker reports through this server's Redis."""
    from ..auth.decision import require_resource
    from ..resources import is_valid_id
    from ..transfer.progress import read_progress
    if not is_valid_id(task_id):
        raise FhirError(400, "value", f"{task_id[:64]!r} is not a Task id", ["Task.id"])
    with current_app.extensions["fhirimg.repository"].reading() as uow:
        require_resource(uow.conn, current_principal(), "r", "Task", task_id)
    config = current_app.config["FHIRIMG"]
    found = None
    if config.get("redis_url"):
        with redis_or_503() as connection:
            found = read_progress(connection, task_id)
    if found is None:
        raise FhirError(404, "not-found", f"no live progress for Task/{task_id}")
    return json_answer(found)


@blueprint.route("/api/replication", methods=["GET"])
def replication() -> Response:
    """Replication links: their cursors and counts cover every resource, so reading them
    needs search on every type."""
    for res_type in SUPPORTED_TYPES:
        decide(current_principal(), "s", res_type).require()
    live = request.args.get("live") == "true"
    rows = status.replication_links(current_app.extensions["fhirimg.engine"], current_app.config["FHIRIMG"], live)
    return json_answer({"links": rows})


@contextmanager
def redis_or_503():
    """Redis unreachable is a 503 OperationOutcome with Retry-After, not a 500."""
    from redis.exceptions import RedisError
    try:
        yield app_redis()
    except RedisError as exc:
        raise FhirError(503, "transient", f"Redis cannot be reached: {type(exc).__name__}",
                        headers={"Retry-After": "5"}) from None


def json_answer(body: dict) -> Response:
    return Response(dumps(body), 200, content_type="application/json", headers={"Cache-Control": "no-store"})
