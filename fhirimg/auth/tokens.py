"""The built-in authorization server for SMART Backend Services (backend-services.html).

``client_credentials`` with a ``private_key_jwt`` client assertion, checked as RFC 7523 §3
and SMART ask: a registered, enabled client; ``iss`` = ``sub`` = its client_id; ``aud`` =
this token URL; ``exp`` at most 5 minutes ahead; a ``jti`` never used before (kept in the
database, so the refusal holds across restarts, workers and nodes); the key chosen by
``kid`` from the client's registered JWKS, ``jku``/``x5u`` never followed unless equal to
the registered URL. The answer is a JWT access token signed with the server's own key.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt
from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ..store.engine import WRITE_OPTION
from .clients import Client, get_client
from .errors import OAuthError
from .jwks import KeySetCache, KeySetError, keys_of
from .keys import KeyRing
from .schema import auth_assertion_jti
from .scopes import grant, parse_scopes

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384", "RS256", "ES256", "RS512", "ES512", "PS256", "PS384")
MAX_ASSERTION_LIFETIME = 300
MAX_ASSERTION_BYTES = 16 * 1024


@dataclass
class TokenServer:
    engine: Engine
    keys: KeyRing
    key_sets: KeySetCache
    lifetime: int
    clock_skew: int
    clock: object = time.time

    def issue(self, form: dict[str, str], token_urls: list[str], issuer: str, audience: str) -> dict:
        """The token response for a token request's form fields, or OAuthError."""
        if form.get("grant_type") != "client_credentials":
            raise OAuthError("unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.get("client_assertion") or ""
        if not assertion or len(assertion) > MAX_ASSERTION_BYTES:
            raise OAuthError("invalid_request", "client_assertion is missing or too long")
        client, claims = self.authenticate(assertion, token_urls)
        granted = grant(parse_scopes(form.get("scope")), parse_scopes(client.scopes))
        if not granted.scopes:
            raise OAuthError("invalid_scope", f"none of the requested scopes {form.get('scope', '')!r} is "
                             f"allowed for client {client.client_id}")
        now = int(self.clock())
        access = {"iss": issuer, "sub": client.client_id, "aud": audience, "client_id": client.client_id,
                  "iat": now, "exp": now + self.lifetime, "jti": uuid.uuid4().hex, "scope": granted.text()}
        if client.patients:
            access["fhirimg_patients"] = client.patients
        if client.organizations:
            access["fhirimg_organizations"] = client.organizations
        return {"access_token": self.keys.sign(access), "token_type": "bearer", "expires_in": self.lifetime,
                "scope": granted.text()}

    def authenticate(self, assertion: str, token_urls: list[str]) -> tuple[Client, dict]:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OAuthError("invalid_client", "client_assertion is not a JWT") from None
        client_id = unverified.get("iss")
        client = get_client(self.engine, client_id) if isinstance(client_id, str) else None
        if client is None or client.disabled:
            raise OAuthError("invalid_client", "unknown or disabled client")
        if client.public:
            raise OAuthError("invalid_client", f"{client.client_id} is a public client: it has no key to sign "
                             "an assertion with")
        key = self.assertion_key(client, header)
        try:
            claims = jwt.decode(assertion, key, algorithms=[header["alg"]], audience=token_urls,
                                issuer=client.client_id, leeway=self.clock_skew,
                                options={"require": ["iss", "sub", "aud", "exp", "jti"]})
        except jwt.PyJWTError as exc:
            raise OAuthError("invalid_client", f"client_assertion rejected: {exc}") from None
        if not isinstance(claims["exp"], (int, float)) or isinstance(claims["exp"], bool):
            raise OAuthError("invalid_client", "client_assertion exp must be a NumericDate")
        if claims["sub"] != client.client_id:
            raise OAuthError("invalid_client", "client_assertion sub must equal iss (the client_id)")
        if claims["exp"] - self.clock() > MAX_ASSERTION_LIFETIME + self.clock_skew:
            raise OAuthError("invalid_client", "client_assertion exp is more than 5 minutes ahead")
        self.remember_jti(client.client_id, str(claims["jti"]), int(claims["exp"]))
        return client, claims

    def assertion_key(self, client: Client, header: dict):
        alg = header.get("alg")
        if alg not in ASSERTION_ALGORITHMS:
            raise OAuthError("invalid_client", f"client_assertion alg {alg!r} is not accepted "
                             f"(accepted: {', '.join(ASSERTION_ALGORITHMS)})")
        for name in ("jku", "x5u"):
            if header.get(name) is not None and header.get(name) != client.jwks_url:
                raise OAuthError("invalid_client", f"the assertion's {name} is not the client's registered JWKS URL")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise OAuthError("invalid_client", "the assertion header has no kid")
        try:
            found = keys_of(client.jwks).get(kid) if client.jwks else self.key_sets.key(client.jwks_url, kid)
        except KeySetError as exc:
            raise OAuthError("invalid_client", str(exc)) from None
        if found is None:
            raise OAuthError("invalid_client", f"no key with kid {kid!r} in the client's JWKS")
        if found.key_type != ("RSA" if alg[:2] in ("RS", "PS") else "EC"):
            raise OAuthError("invalid_client", f"key {kid!r} is not a key for {alg}")
        return found.key

    def remember_jti(self, client_id: str, jti: str, exp: int) -> None:
        """A jti is accepted once per client within its assertion's lifetime (backend-services.html)."""
        now_ms = int(self.clock() * 1000)
        try:
            with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
                conn.execute(delete(auth_assertion_jti).where(
                    auth_assertion_jti.c.expires_ms < now_ms - self.clock_skew * 1000))
                conn.execute(insert(auth_assertion_jti).values(
                    client_id=client_id, jti=jti[:256], expires_ms=(exp + self.clock_skew) * 1000))
        except IntegrityError:
            raise OAuthError("invalid_client", "client_assertion jti was used before (replay)") from None
