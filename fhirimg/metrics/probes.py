"""/healthz, /readyz and /metrics, and who may read them.

They are answered by a before_request registered ahead of the API's authentication: a
probe or a scrape carries no patient data, and the programs that call them (a load
balancer, Kubernetes, Prometheus) cannot get SMART tokens. The rule:

- /healthz answers anyone: it says only that the process is alive.
- On the ``[metrics] listen`` address, /metrics and /readyz answer without a token (bind it
  to loopback or an internal network); nothing else is served there.
- On the API's port they need ``Authorization: Bearer`` with the static token held in the
  variable ``[metrics] token_env`` names; without one they are refused, unless auth.mode is
  "none" (then everything is served to everyone, as the operator chose).

A refusal is a 401 OperationOutcome and is audited like any other (fhirimg.api.auditing
records 401/403 of any route); a successful scrape or probe is not audited: it reads no
patient data.
"""
from __future__ import annotations

import hmac

from flask import Blueprint, Flask, Response, current_app, request

from ..auth.errors import Unauthorized
from ..errors import FhirError
from .scrape import MetricsState, render

blueprint = Blueprint("metrics", __name__)
NO_STORE = {"Cache-Control": "no-store"}


def metrics_state() -> MetricsState:
    return current_app.extensions["fhirimg.metrics"]


@blueprint.route("/healthz", methods=["GET"])
def healthz() -> Response:
    return Response(b'{"status":"alive"}\n', 200, content_type="application/json", headers=NO_STORE)


@blueprint.route("/readyz", methods=["GET"])
def readyz() -> Response:
    from ..api.negotiation import dumps
    ready, report = metrics_state().readiness.report()
    # The report is this endpoint's answer whether ready or not (a probe reads the status
    # code, a person the names of what failed): not an OperationOutcome.
    return Response(dumps(report), 200 if ready else 503, content_type="application/json", headers=NO_STORE)


@blueprint.route("/metrics", methods=["GET"])
def scrape() -> Response:
    body, content_type = render(metrics_state(), request.headers.get("Accept"))
    return Response(body, 200, content_type=content_type, headers=NO_STORE)


VIEWS = {"metrics.healthz": healthz, "metrics.readyz": readyz, "metrics.scrape": scrape}
OPEN = frozenset({"metrics.healthz"})


def answer_probe() -> Response | None:
    """Answer a probe or scrape here, before authentication; refuse everything else that
    came in on the metrics listener; leave the rest to the API."""
    state = metrics_state()
    on_listener = state.settings.is_listener(request.environ)
    view = VIEWS.get(request.endpoint or "") if request.method in ("GET", "HEAD") else None
    if view is None:
        if on_listener:
            raise FhirError(404, "not-found", "the metrics listener serves only /metrics, /readyz and /healthz")
        return None
    if request.endpoint not in OPEN and not on_listener:
        require_metrics_token(state)
    return view()


def require_metrics_token(state: MetricsState) -> None:
    expected = state.settings.token
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if expected:
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected.encode()):
            return
    else:
        from ..api.access import auth_context
        if not auth_context().enabled:
            return
    where = (f"the token in ${state.settings.token_env}" if expected
             else "the token of [metrics] token_env (none is configured)")
    listener = f", or use the metrics listener {state.settings.listen[0]}:{state.settings.listen[1]}" \
        if state.settings.listen else ""
    raise Unauthorized(f"{request.path} needs {where} as a bearer token{listener}",
                       error="invalid_token" if given else "")


def register_probes(app: Flask, state: MetricsState) -> None:
    app.extensions["fhirimg.metrics"] = state
    app.register_blueprint(blueprint)
    app.before_request(answer_probe)
