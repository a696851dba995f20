"""Access tokens to Principals: the built-in server's JWTs, external issuers' JWTs (RFC 9068,
keys from their JWKS) and opaque tokens by RFC 7662 introspection.

Every check the resource server owes (SMART, SMART Imaging): signature with a pinned
asymmetric algorithm (never ``none``, never HMAC), ``iss`` a trusted issuer, ``aud`` this
server, ``exp``/``nbf`` with a small leeway. A verified token is remembered until it
expires (an introspected one for at most 10 s), so a request pays for the checks once.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict

import jwt
import requests

from .errors import Unauthorized
from .jwks import KeySetCache, KeySetError
from .keys import SIGNING_ALG, KeyRing
from .principal import Principal
from .scopes import parse_scopes

CACHE_SIZE = 10_000
MAX_TOKEN_BYTES = 16 * 1024


class TokenVerifier:
    def __init__(self, keys: KeyRing, key_sets: KeySetCache, issuer: str, issuers: list[dict],
                 clock_skew: int, introspection_ttl: float, session: requests.Session | None = None,
                 clock=time.time):
        self.keys = keys
        self.key_sets = key_sets
        self.issuer = issuer
        self.issuers = {i["issuer"]: i for i in issuers}
        self.clock_skew = clock_skew
        self.introspection_ttl = introspection_ttl
        self.session = session or key_sets.session
        self.clock = clock
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()
        self._lock = threading.Lock()

    def principal(self, token: str, audiences: list[str]) -> Principal:
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthorized("the bearer token is too long")
        key = hashlib.sha256(token.encode() + b"\0" + "\0".join(audiences).encode()).hexdigest()
        cached = self._cache.get(key)
        now = self.clock()
        if cached is not None and now < cached[1]:
            return cached[0]
        principal, until = self._verify(token, audiences)
        with self._lock:
            self._cache[key] = (principal, until)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return principal

    def _verify(self, token: str, audiences: list[str]) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
        except jwt.PyJWTError:
            return self._introspect(token, audiences)
        if not isinstance(issuer, str):
            raise Unauthorized("the token's iss is missing or not a string")
        if issuer == self.issuer:
            # Our own tokens: issued on our clock, so no leeway (expired by a second is expired).
            key = self.keys.verification_key(str(header.get("kid", "")))
            claims = self._decode(token, key, [SIGNING_ALG], audiences, issuer, leeway=0, own=True)
        elif issuer in self.issuers and self.issuers[issuer]["jwks_url"]:
            settings = self.issuers[issuer]
            try:
                jwk = self.key_sets.key(settings["jwks_url"], str(header.get("kid", "")))
            except KeySetError as exc:
                raise Unauthorized(f"the issuer's keys could not be had: {exc}") from None
            claims = self._decode(token, jwk.key if jwk else None, settings["algorithms"],
                                  settings["audience"] or audiences, issuer)
        elif issuer in self.issuers:
            return self._introspect(token, audiences, self.issuers[issuer])
        else:
            raise Unauthorized("the token's issuer is not trusted here")
        principal = principal_from_claims(claims, own=issuer == self.issuer)
        return principal, float(claims["exp"]) + (0 if issuer == self.issuer else self.clock_skew)

    def _decode(self, token: str, key, algorithms: list[str], audiences: list[str], issuer: str,
                leeway: int | None = None, own: bool = False) -> dict:
        if key is None:
            raise Unauthorized("the token's kid names no key of its issuer")
        alg = jwt.get_unverified_header(token).get("alg")
        if alg not in algorithms:  # checked before PyJWT too: the answer names the rule
            raise Unauthorized(f"the token's alg {alg!r} is not accepted (accepted: {', '.join(algorithms)})")
        try:
            return jwt.decode(token, key, algorithms=algorithms, audience=audiences, issuer=issuer,
                              leeway=self.clock_skew if leeway is None else leeway,
                              # iat of our own tokens says nothing new, and nodes' clocks differ a little
                              options={"require": ["exp", "iss", "aud"], "verify_iat": not own})
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthorized("the token is not valid yet (nbf/iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("the token is not for this server (aud)") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"the token was rejected: {exc}") from None

    def _introspect(self, token: str, audiences: list[str], settings: dict | None = None) -> tuple[Principal, float]:
        if settings is None:
            settings = next((i for i in self.issuers.values() if i["introspection_url"]), None)
            if settings is None:
                raise Unauthorized("the bearer token is not a JWT and no introspection endpoint is configured")
        secret = os.environ.get(settings["introspection_secret_env"], "") if settings["introspection_secret_env"] else ""
        try:
            self.key_sets.policy.check_url(settings["introspection_url"])
            response = self.session.post(settings["introspection_url"], data={"token": token},
                                         auth=(settings["introspection_client_id"], secret)
                                         if settings["introspection_client_id"] else None,
                                         headers={"Accept": "application/json"}, timeout=(3, 5),
                                         allow_redirects=False)
            answer = response.json() if response.status_code == 200 else None
        except (requests.RequestException, ValueError, OSError) as exc:
            raise Unauthorized(f"token introspection failed: {type(exc).__name__}") from None
        if not isinstance(answer, dict) or answer.get("active") is not True:
            raise Unauthorized("the token is not active")
        wanted = settings["audience"] or audiences
        aud = answer.get("aud")
        aud = [a for a in (aud if isinstance(aud, list) else [aud]) if isinstance(a, str)]
        if (aud or settings["audience"]) and not set(aud) & set(wanted):
            # With an audience configured the answer must name it; without, a missing aud is
            # taken as "this authorization server serves only us" (SMART introspection has no aud).
            raise Unauthorized("the token is not for this server (aud)")
        exp = answer.get("exp") or 0
        if not isinstance(exp, (int, float)):
            raise Unauthorized("the introspection answer's exp is not a number")
        if exp and exp < self.clock():
            raise Unauthorized("the token has expired")
        answer.setdefault("iss", settings["issuer"])
        until = min(exp or self.clock(), self.clock() + self.introspection_ttl)
        return principal_from_claims(answer), until


def principal_from_claims(claims: dict, own: bool = False) -> Principal:
    """SMART/RFC 9068 claims: scope (or Entra's scp), client_id (or azp), patient, fhirUser.
    In this server's own tokens a ``sub`` other than the client is the signed-in user."""
    scope = claims.get("scope", claims.get("scp", ""))
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    scopes = parse_scopes(str(scope))
    patient = claims.get("patient")
    if patient is not None and not (isinstance(patient, str) and patient):
        raise Unauthorized("the token's patient claim is not a Patient id")
    notes = [f"scope {s!r} ignored: {why}" for s, why in scopes.rejected]
    client_id = str(claims.get("client_id") or claims.get("azp") or claims.get("sub") or "")
    sub = claims.get("sub")
    user = sub if own and isinstance(sub, str) and sub and sub != client_id else None
    fhir_user = claims.get("fhirUser")
    return Principal(
        client_id=client_id, scopes=scopes, issuer=str(claims.get("iss", "")), subject=sub,
        fhir_user=fhir_user if isinstance(fhir_user, str) and fhir_user else user, user=user,
        patient=str(patient) if isinstance(patient, str) and patient else None,
        expires_at=float(claims.get("exp") or 0), token_id=claims.get("jti"),
        patients=string_list(claims.get("fhirimg_patients")),
        organizations=string_list(claims.get("fhirimg_organizations")), notes=notes)


def string_list(value) -> tuple[str, ...]:
    """A list-of-strings claim; anything else refuses the token rather than narrowing wrongly."""
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Unauthorized("a fhirimg_patients/fhirimg_organizations claim is not a list of ids")
    return tuple(value)
