"""SMART App Launch, standalone (app-launch.html): the authorization request and what a
signed-in user is granted.

The request is checked in the order that keeps the browser safe: the client and its
redirect URI first - if either is wrong nobody is sent anywhere (RFC 6749 §4.1.2.1, no open
redirector) - then everything else, whose errors go back to the app's redirect URI.
PKCE with S256 is required and ``plain`` refused (SMART: "SHALL NOT support plain");
``aud`` must be this server's FHIR base, which keeps a token from a counterfeit resource
server's hands.
"""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlencode

from sqlalchemy.engine import Engine

from .clients import Client, get_client, redirect_matches
from .scopes import ScopeSet, grant, parse_scopes
from .users import User

CODE_CHALLENGE = re.compile(r"^[A-Za-z0-9_\-]{43}\Z")  # base64url of a SHA-256, unpadded (RFC 7636 §4.2)
MAX_STATE = 2048
# Identity and session scopes fhirimg acts on; others (launch, launch/patient, offline_access)
# are not supported and never granted.
IDENTITY_SCOPES = ("openid", "fhirUser", "profile", "online_access")
SINGLE = ("client_id", "redirect_uri", "response_type", "scope", "state", "aud", "resource", "code_challenge",
          "code_challenge_method", "nonce", "prompt", "response_mode", "login_hint")


class BadClient(Exception):
    """The client or its redirect URI is wrong: an error page, never a redirect."""


class AuthorizeError(Exception):
    """An RFC 6749 §4.1.2.1 error, sent to the (verified) redirect URI with the state."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str | None):
        super().__init__(description)
        self.error = error
        self.description = description
        self.redirect_uri = redirect_uri
        self.state = state

    def location(self) -> str:
        return with_query(self.redirect_uri, {"error": self.error, "error_description": self.description,
                                              "state": self.state})


@dataclass
class AuthorizationRequest:
    client: Client
    redirect_uri: str
    state: str
    scope: str
    aud: str
    code_challenge: str
    nonce: str | None = None
    prompt: str | None = None
    login_hint: str = ""

    def fail(self, error: str, description: str) -> AuthorizeError:
        return AuthorizeError(error, description, self.redirect_uri, self.state)

    def hidden_fields(self) -> list[tuple[str, str]]:
        """The request again, for the sign-in form to post back (it is checked again then)."""
        fields = [("response_type", "code"), ("client_id", self.client.client_id), ("redirect_uri", self.redirect_uri),
                  ("scope", self.scope), ("state", self.state), ("aud", self.aud),
                  ("code_challenge", self.code_challenge), ("code_challenge_method", "S256")]
        return fields + ([("nonce", self.nonce)] if self.nonce else [])


@dataclass
class Grant:
    """What a code (and later a refresh token) stands for: decided once, at sign-in."""

    username: str
    client_id: str
    scope: str
    aud: str
    auth_time: int
    patients: list[str] = field(default_factory=list)
    organizations: list[str] = field(default_factory=list)
    nonce: str | None = None

    @property
    def patient(self) -> str | None:
        """The launch's patient context: the one patient the user (or app) is limited to."""
        return self.patients[0] if len(self.patients) == 1 and not self.organizations else None

    def to_json(self) -> dict:
        return asdict(self)


def with_query(uri: str, params: dict) -> str:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return uri + ("&" if "?" in uri else "?") + query


def one(params, name: str, refuse) -> str | None:
    """A parameter given at most once (RFC 6749 §3.1), without control characters."""
    values = params.getlist(name) if hasattr(params, "getlist") else ([params[name]] if name in params else [])
    if len(values) > 1:
        raise refuse(f"{name} was given more than once")
    value = values[0] if values else None
    if value is not None and (len(value) > MAX_STATE or any(ord(c) < 32 for c in value)):
        raise refuse(f"{name} is longer than {MAX_STATE} characters or has control characters")
    return value


def check_request(params, engine: Engine, own_root: str, fhir_base: str) -> AuthorizationRequest:
    """The authorization request of `params` (query or form), or BadClient / AuthorizeError."""
    client_id = one(params, "client_id", BadClient)
    client = get_client(engine, client_id) if client_id else None
    if client is None or client.disabled:
        raise BadClient("The application that sent you here is not registered with this server (unknown or "
                        "disabled client_id).")
    redirect_uri = one(params, "redirect_uri", BadClient)
    if not redirect_uri or not redirect_matches(client, redirect_uri, own_root):
        raise BadClient(f"The return address the application gave is not one registered for {client.name} "
                        "(redirect_uri does not match exactly).")
    state = one(params, "state", lambda why: AuthorizeError("invalid_request", why, redirect_uri, None))

    def refuse(why: str, error: str = "invalid_request") -> AuthorizeError:
        return AuthorizeError(error, why, redirect_uri, state)
    got = {name: one(params, name, refuse) for name in SINGLE}
    if got["response_type"] != "code":
        raise refuse("response_type must be code", "unsupported_response_type")
    if not state:
        raise refuse("state is required (SMART App Launch)")
    if "request" in params or "request_uri" in params:
        raise refuse("request objects are not supported", "request_not_supported")
    if got["response_mode"] not in (None, "query"):
        raise refuse("response_mode must be query")
    if not (got["scope"] or "").strip():
        raise refuse("scope is required", "invalid_scope")
    aud = got["aud"] or got["resource"]  # RFC 8707's resource, which SMART allows as a synonym
    if aud is None or aud.rstrip("/") != fhir_base.rstrip("/"):
        raise refuse(f"aud must be this server's FHIR base URL, {fhir_base}")
    if got["code_challenge_method"] != "S256" or not got["code_challenge"]:
        raise refuse("PKCE is required: code_challenge with code_challenge_method=S256 (plain is not supported)")
    if not CODE_CHALLENGE.match(got["code_challenge"]):
        raise refuse("code_challenge must be the base64url SHA-256 of the code_verifier (43 characters)")
    if got["prompt"] not in (None, "", "login", "none"):
        raise refuse(f"prompt={got['prompt']} is not supported (none or login)")
    return AuthorizationRequest(client, redirect_uri, state, got["scope"].strip(), fhir_base,
                                got["code_challenge"], got["nonce"] or None, got["prompt"] or None,
                                (got["login_hint"] or "")[:64])


# -- what the signed-in user gets --------------------------------------------------------------
def decide_grant(ask: AuthorizationRequest, user: User, now: float | None = None) -> Grant:
    """Requested ∩ the app's scopes ∩ the user's (resource scopes); the identity scopes the
    app may ask for; the patients the user and app are both limited to. AuthorizeError
    (access_denied) when nothing is left or the limits cannot be combined."""
    patients, organizations = patient_limits(ask, ask.client, user)
    scopes = granted_scopes(parse_scopes(ask.scope), parse_scopes(ask.client.scopes), parse_scopes(user.scopes))
    grant_ = Grant(user.username, ask.client.client_id, "", ask.aud, int(now if now is not None else time.time()),
                   patients, organizations, ask.nonce)
    if grant_.patient is None:  # scopes-and-launch-context.html: patient/ scopes need a patient in context
        scopes.scopes = [s for s in scopes.scopes if s.context != "patient"]
    if not scopes.scopes and "openid" not in scopes.other:
        raise ask.fail("access_denied", f"user {user.username} may have none of the requested scopes with "
                       f"{ask.client.client_id}")
    grant_.scope = scopes.text()
    return grant_


def granted_scopes(requested: ScopeSet, client: ScopeSet, user: ScopeSet) -> ScopeSet:
    by_client = grant(requested, client)
    resources = grant(ScopeSet(scopes=by_client.scopes), user).scopes
    return ScopeSet(scopes=resources, other=[w for w in by_client.other if w in IDENTITY_SCOPES])


def patient_limits(ask: AuthorizationRequest, client: Client, user: User) -> tuple[list[str], list[str]]:
    """(patients, organizations) a token may reach: the narrower of the user's and the app's."""
    if user.patients and client.organizations:
        raise ask.fail("access_denied", f"{client.client_id} is limited by organization and {user.username} "
                       "by patient; fhirimg cannot combine the two")
    if user.patients and client.patients:
        both = [p for p in user.patients if p in client.patients]
        if not both:
            raise ask.fail("access_denied", f"{user.username} and {client.client_id} share no patient")
        return both, []
    if user.patients:
        return list(user.patients), []
    return list(client.patients), list(client.organizations)
