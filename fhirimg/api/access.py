"""HTTP side of access control: who the request is (the bearer token), the token endpoint,
the SMART App Launch authorization endpoint (sign-in of operator accounts), the SMART and
OpenID Connect discovery documents, and CORS.

Every request except the public ones (metadata, discovery, the token, authorization and
revocation endpoints and the server's public keys, CORS preflight) is authenticated here,
before any view runs; the views then ask fhirimg.auth.decision, the one place that decides.
"""
from __future__ import annotations

import hmac
import logging
import re
import secrets
import threading
import time

from flask import Blueprint, Flask, Response, current_app, g, request, url_for

from ..auth.clients import ensure_builtin_clients
from ..auth.context import AuthContext, openid_configuration, server_root, smart_configuration
from ..auth.errors import Forbidden, OAuthError, Unauthorized
from ..auth.grants import GRANT_TYPES
from ..auth.launch import AuthorizationRequest, AuthorizeError, BadClient, check_request, decide_grant, with_query
from ..auth.pages import error_page, login_page
from ..auth.principal import Principal, anonymous_principal
from ..auth.scopes import parse_scopes
from ..auth.users import USERNAME, User, get_user, verify_password
from ..auth.verify import principal_from_claims
from ..auth.writes import WriteGuard
from ..resources import SUPPORTED_TYPES
from ..transfer.netpolicy import is_loopback_name
from .negotiation import base_url, dumps, empty_response

log = logging.getLogger("fhirimg.auth")
blueprint = Blueprint("access", __name__)
PUBLIC = {("GET", "/fhir/metadata"), ("HEAD", "/fhir/metadata"), ("GET", "/fhir/.well-known/smart-configuration"),
          ("POST", "/auth/token"), ("GET", "/auth/jwks"), ("GET", "/auth/authorize"), ("POST", "/auth/authorize"),
          ("POST", "/auth/revoke"), ("GET", "/auth/.well-known/openid-configuration")}
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
    return WriteGuard(g.principal, current_app.extensions.get("fhirimg.subscriptions"))


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


def engine():
    return current_app.extensions["fhirimg.engine"]


# -- authentication of every request -----------------------------------------------------------
def is_public_page() -> bool:
    """The console's page, sign-in callback and static files, and the viewer's files, hold
    no data: a browser loads them before it has a token (the app then signs in).
    /console/api/* is not public."""
    if request.method not in ("GET", "HEAD"):
        return False
    path = request.path.rstrip("/")
    return (path in ("/console", "/console/callback") or path.startswith("/console/static/")
            or path == "/viewer" or path.startswith("/viewer/"))


def authenticate() -> Response | None:
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        return preflight()
    if (request.method, request.path.rstrip("/") or "/") in PUBLIC or is_public_page():
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
    if form.get("grant_type") in GRANT_TYPES:  # App Launch: authorization_code, refresh_token
        answer = context.launch.issue(form, [token_url], own_issuer())
    else:
        answer = context.tokens.issue(form, [token_url], own_issuer(), public_base())
    note_login(answer)
    return Response(dumps(answer), 200, content_type="application/json",
                    headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


def note_login(answer: dict) -> None:
    """A token issued: the client (verified now), the user it acts for and the scopes
    granted, never the token."""
    import jwt
    from .auditing import note
    claims = jwt.decode(answer["access_token"], options={"verify_signature": False})
    g.principal = principal_from_claims(claims, own=True)
    note("login", details={"scope": answer.get("scope", "")[:500]})


@blueprint.route("/auth/jwks", methods=["GET"])
def jwks() -> Response:
    return Response(dumps(auth_context().keys.public_jwks()), 200, content_type="application/jwk-set+json",
                    headers={"Cache-Control": "max-age=300"})


def scopes_supported() -> list[str]:
    return ["system/*.cruds", "system/*.rs", "user/*.cruds", "user/*.rs", "patient/*.rs"] + \
        [f"system/{t}.rs" for t in SUPPORTED_TYPES] + [f"user/{t}.rs" for t in SUPPORTED_TYPES]


@blueprint.route("/fhir/.well-known/smart-configuration", methods=["GET"])
def smart_config() -> Response:
    # conformance.html: application/json whatever the Accept header says.
    return Response(dumps(smart_configuration(public_base(), scopes_supported())), 200,
                    content_type="application/json")


@blueprint.route("/auth/.well-known/openid-configuration", methods=["GET"])
def openid_config() -> Response:
    # OpenID Connect Discovery §4: {issuer}/.well-known/openid-configuration, issuer = own_issuer()
    return Response(dumps(openid_configuration(public_base(), scopes_supported())), 200,
                    content_type="application/json", headers={"Cache-Control": "max-age=300"})


# -- SMART App Launch: the authorization endpoint (app-launch.html step 4) -----------------------
GENERIC_FAILURE = "Wrong user name or password."
THROTTLED = "Too many failed sign-ins. Wait a quarter of an hour, then try again."
CSRF_EXPIRED = "This sign-in form has expired or did not come from this server. Please sign in again."
CSRF_VALUE = re.compile(r"^[A-Za-z0-9_\-]{43}\Z")


@blueprint.route("/auth/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    """GET (or POST, SMART's authorize-post) an authorization request: the sign-in form. POST
    of that form: check the password, then back to the app with a code."""
    if not auth_context().enabled:
        return html_answer(*error_page('This server runs without sign-in (auth.mode = "none").'), 404)
    signing_in = request.method == "POST" and any(k in request.form for k in ("csrf_token", "username", "password"))
    params = request.form if request.method == "POST" else request.args
    try:
        ask = check_request(params, engine(), server_root(public_base()), public_base())
    except BadClient as exc:  # never a redirect: the address is not known to be the app's
        log.info("authorization request refused: %s", exc)
        return html_answer(*error_page(str(exc)), 400)
    except AuthorizeError as exc:
        return redirect_to(exc.location())
    if not signing_in:
        if ask.prompt == "none":  # OIDC Core §3.1.2.6: no sign-in session is kept here
            return redirect_to(ask.fail("login_required", "the user must sign in").location())
        return sign_in_form(ask)
    return sign_in(ask)


def sign_in(ask: AuthorizationRequest) -> Response:
    form = request.form
    username = (form.get("username") or "").strip().lower()[:200]
    sent, kept = form.get("csrf_token") or "", request.cookies.get(csrf_cookie()) or ""
    if not kept or not hmac.compare_digest(sent.encode(), kept.encode()):  # double-submit cookie
        return sign_in_form(ask, CSRF_EXPIRED, 400, username)
    context, address = auth_context(), request.remote_addr or ""
    refusal = context.throttle.refusal(username, address)
    if refusal:  # the password is not even checked
        note_sign_in(ask, None, username, refusal, 429)
        return sign_in_form(ask, THROTTLED, 429, username)
    checked = verify_password(engine(), username, form.get("password") or "")
    if checked.user is None:
        context.throttle.note_failure(username, address)
        note_sign_in(ask, None, username, checked.reason, 401)
        return sign_in_form(ask, GENERIC_FAILURE, 200, username)
    context.throttle.note_success(username)
    try:
        grant = decide_grant(ask, checked.user)
    except AuthorizeError as exc:
        note_sign_in(ask, checked.user, username, exc.description, 403)
        return redirect_to(exc.location())
    code = context.launch.codes.issue(grant, ask)
    note_sign_in(ask, checked.user, username, None, None, grant.scope)
    return redirect_to(with_query(ask.redirect_uri, {"code": code, "state": ask.state}))


def note_sign_in(ask: AuthorizationRequest, user: User | None, claimed: str, reason: str | None,
                 status: int | None, scope: str = "") -> None:
    """DCM 110122 Login, success or failure: the app, and the user (signed in) or the name
    tried (failure; the password never)."""
    from .auditing import note
    g.principal = Principal(ask.client.client_id, parse_scopes(""), user=user.username if user else None,
                            fhir_user=(user.fhir_user or user.username) if user else None)
    details = {"step": "sign-in"}
    if user is None and USERNAME.match(claimed):
        details["user name tried"] = claimed
    if scope:
        details["scope"] = scope[:500]
    note("login", details=details, status=status, reason=reason)


def sign_in_form(ask: AuthorizationRequest, error: str = "", status: int = 200, username: str = "") -> Response:
    kept = request.cookies.get(csrf_cookie()) or ""
    value = kept if CSRF_VALUE.match(kept) else secrets.token_urlsafe(32)
    response = html_answer(*login_page(ask, url_for("access.authorize"), value, error, username), status)
    secure = is_https()
    response.set_cookie(csrf_cookie(), value, max_age=900, secure=secure, httponly=True, samesite="Strict",
                        path="/" if secure else url_for("access.authorize"))
    return response


def is_https() -> bool:
    return request.is_secure or public_base().startswith("https://")


def csrf_cookie() -> str:
    # __Host-: only this origin may set it (no sibling subdomain planting a known value).
    return "__Host-fhirimg-signin" if is_https() else "fhirimg-signin"


def html_answer(html: str, headers: dict, status: int) -> Response:
    return Response(html, status, content_type="text/html; charset=utf-8", headers=headers)


def redirect_to(location: str) -> Response:
    return Response("", 303, headers={"Location": location, "Cache-Control": "no-store",
                                      "Referrer-Policy": "no-referrer"})


@blueprint.route("/auth/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    """OIDC Core §5.3 for a signed-in user's access token with ``openid`` (the OHIF Viewer
    asks it after sign-in): who the user is, no more than the token's scopes say."""
    principal = current_principal()
    granted = principal.scopes.other
    if principal.user is None or "openid" not in granted:
        raise Forbidden("userinfo needs the access token of a signed-in user, granted the openid scope")
    user = get_user(engine(), principal.user)
    if user is None or user.disabled:
        raise Unauthorized("the user is no longer allowed to sign in")
    claims = {"sub": user.username}
    if "fhirUser" in granted and user.fhir_user:
        claims["fhirUser"] = user.fhir_user
    if "profile" in granted:
        claims["preferred_username"] = user.username
    return Response(dumps(claims), 200, content_type="application/json", headers={"Cache-Control": "no-store"})


@blueprint.route("/auth/revoke", methods=["POST"])
def revoke() -> Response:
    """RFC 7009: a refresh token's session ends (sign-out). Access tokens are JWTs and lapse
    within auth.token_lifetime; an unknown token is answered 200 too, as §2.2 says."""
    if request.mimetype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "the revocation request must be application/x-www-form-urlencoded")
    form = {k: v for k, v in request.form.items()}
    launch = auth_context().launch
    client = launch.client_of(form, [server_root(public_base()) + "/auth/token", server_root(public_base()) +
                                     "/auth/revoke"])
    launch.refresh.revoke(form.get("token") or "", client.client_id)
    return Response("", 200, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


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
    if context.enabled:
        ensure_builtin_clients(context.tokens.engine)  # fhirimg-console, fhirimg-viewer
    else:
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
