"""HTTP side of access control: who the request is (the bearer token), the token endpoint,
the SMART discovery document, and CORS.

Every request except the public ones (metadata, discovery, the token endpoint and the
server's public keys, CORS preflight) is authenticated here, before any view runs; the
views then ask fhirimg.auth.decision, the one place that decides.
"""
from __future__ import annotations

import logging
import threading
import time

from flask import Blueprint, Flask, Response, current_app, g, request

from ..auth.context import AuthContext, server_root, smart_configuration
from ..auth.writes import WriteGuard
from ..auth.errors import OAuthError, Unauthorized
from ..auth.principal import Principal, anonymous_principal
from ..auth.scopes import parse_scopes
from ..resources import SUPPORTED_TYPES
from ..transfer.netpolicy import is_loopback_name
from .negotiation import base_url, dumps, empty_response

log = logging.getLogger("fhirimg.auth")
blueprint = Blueprint("access", __name__)
PUBLIC = {("GET", "/fhir/metadata"), ("HEAD", "/fhir/metadata"), ("GET", "/fhir/.well-known/smart-configuration"),
          ("POST", "/auth/token"), ("GET", "/auth/jwks")}
CORS_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = "Authorization, Content-Type, Accept, Prefer, If-Match, If-None-Match, If-None-Exist, X-Request-Id"
CORS_EXPOSE = "ETag, Location, Content-Location, Last-Modified, X-Request-Id, X-Next-Poll, WWW-Authenticate"
ANONYMOUS_WARNING_SECONDS = 3600
ANONYMOUS = anonymous_principal()


def auth_context() -> AuthContext:
    return current_app.extensions["fhirimg.auth"]


def current_principal() -> Principal:
    return g.principal


def write_guard() -> WriteGuard:
    return WriteGuard(g.principal)


def public_base() -> str:
    """This server's FHIR base for tokens: the configured base_url; without one, the address
    the request used only when it is on loopback, else the serve address. Never a Host header
    from elsewhere: a token or assertion made for another server must not match here."""
    configured = current_app.config["FHIRIMG"]["base_url"]
    if configured:
        return configured
    host = (request.host or "").rsplit(":", 1)[0].strip("[]")
    if is_loopback_name(host) and is_loopback_name(request.remote_addr or ""):  # both ends on this machine
        return base_url()
    from ..auth.cli import default_base
    return default_base(current_app.config["FHIRIMG"])


def accepted_audiences() -> list[str]:
    """This server as a token's ``aud``: its FHIR base."""
    base = public_base()
    return [base, base + "/"]


def own_issuer() -> str:
    return server_root(public_base()) + "/auth"


# -- authentication of every request -----------------------------------------------------------
def authenticate() -> Response | None:
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        return preflight()
    if (request.method, request.path.rstrip("/") or "/") in PUBLIC:
        return None
    context = auth_context()
    if not context.enabled:
        g.principal = ANONYMOUS
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("this server needs a bearer token (Authorization: Bearer ...); get one at "
                           f"{server_root(public_base())}/auth/token", error="" if not header else "invalid_request")
    g.principal = context.verifier(own_issuer()).principal(token.strip(), accepted_audiences())
    return None


# -- the token endpoint and discovery ---------------------------------------------------------
@blueprint.route("/auth/token", methods=["POST"])
def token() -> Response:
    context = auth_context()
    if not context.enabled:
        raise OAuthError("invalid_request", "auth.mode is \"none\": this server issues no tokens")
    if request.mimetype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the token request must be application/x-www-form-urlencoded")
    form = {k: v for k, v in request.form.items()}
    token_url = server_root(public_base()) + "/auth/token"
    answer = context.tokens.issue(form, [token_url], own_issuer(), public_base())
    note_login(answer)
    return Response(dumps(answer), 200, content_type="application/json",
                    headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def note_login(answer: dict) -> None:
    """A token issued: the client (verified now) and the scopes granted, never the token."""
    import jwt
    from .auditing import note
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    g.principal = Principal(str(claims.get("client_id") or claims.get("sub")), parse_scopes(""),
                            token_id=claims.get("jti"))
    note("login", details={"scope": answer.get("scope", "")[:500]})


@blueprint.route("/auth/jwks", methods=["GET"])
def jwks() -> Response:
    return Response(dumps(auth_context().keys.public_jwks()), 200, content_type="application/jwk-set+json",
                    headers={"Cache-Control": "max-age=300"})


@blueprint.route("/fhir/.well-known/smart-configuration", methods=["GET"])
def smart_config() -> Response:
    # conformance.html: application/json whatever the Accept header says.
    scopes = ["system/*.cruds", "system/*.rs", "user/*.cruds", "patient/*.rs", "launch/patient", "fhirUser"] + \
             [f"system/{t}.rs" for t in SUPPORTED_TYPES]
    return Response(dumps(smart_configuration(public_base(), scopes)), 200, content_type="application/json")


@blueprint.app_errorhandler(OAuthError)
def oauth_error(error: OAuthError) -> Response:
    headers = {"Cache-Control": "no-store", "Pragma": "no-cache"}
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="fhirimg-token"'
    log.info("token request refused: %s: %s", error.error, error.description)
    g.audit_reason = f"{error.error}: {error.description}"[:500]
    return Response(dumps(error.to_json()), error.status, content_type="application/json", headers=headers)


# -- CORS ------------------------------------------------------------------------------------------
def allowed_origin() -> str | None:
    origin = request.headers.get("Origin")
    if origin and origin in current_app.config["FHIRIMG"]["cors"]["allowed_origins"]:
        return origin
    return None


def preflight() -> Response:
    origin = allowed_origin()
    response = empty_response(204)
    if origin is not None:
        response.headers.update({"Access-Control-Allow-Methods": CORS_METHODS,
                                 "Access-Control-Allow-Headers": CORS_HEADERS,
                                 "Access-Control-Max-Age": str(current_app.config["FHIRIMG"]["cors"]["max_age"])})
    return response


def add_cors_headers(response: Response) -> Response:
    origin = allowed_origin()
    if origin is not None:
        # Named origins only, never "*": the requests carry an Authorization header.
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSE
        response.headers.add("Vary", "Origin")
    return response


def register_access(app: Flask, context: AuthContext) -> None:
    app.extensions["fhirimg.auth"] = context
    app.register_blueprint(blueprint)
    app.before_request(authenticate)
    app.after_request(add_cors_headers)
    if not context.enabled:
        warn_anonymous()
        start_anonymous_reminder()


def warn_anonymous() -> None:
    log.warning("auth.mode = \"none\": every request is served WITHOUT authentication, as "
                "auth.allow_anonymous asks. Do not expose this server to a network with patient data.")


_reminder_started = threading.Event()


def start_anonymous_reminder() -> None:
    """One thread per process, however many apps it builds."""
    if _reminder_started.is_set():
        return
    _reminder_started.set()

    def remind():
        while True:
            time.sleep(ANONYMOUS_WARNING_SECONDS)
            warn_anonymous()
    threading.Thread(target=remind, name="fhirimg-anonymous-warning", daemon=True).start()
