"""fhirimg as a SMART Backend Services client of another server (replication links,
transfer sources, ``fhirimg token``): sign a client assertion with our private key, trade
it for an access token, keep the token until shortly before it expires.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass

import jwt
import requests
from cryptography.hazmat.primitives import serialization

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RENEW_BEFORE_SECONDS = 30
ASSERTION_LIFETIME = 240


class TokenRequestError(Exception):
    """The remote token endpoint did not give us a token; the message says what it answered."""


def load_private_key(path: str = "", env: str = ""):
    """A PEM private key from a file or from an environment variable (never the config file)."""
    if env:
        value = os.environ.get(env, "")
        if not value:
            raise TokenRequestError(f"environment variable {env} (the client's private key) is not set")
        data = value.encode()
    else:
        with open(path, "rb") as fh:
            data = fh.read()
    return serialization.load_pem_private_key(data, password=None)


def algorithm_for(key) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}[key.curve.name]
    return "RS384"


def client_assertion(client_id: str, token_url: str, key, kid: str, now: float | None = None) -> str:
    now = int(now if now is not None else time.time())
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "iat": now,
              "exp": now + ASSERTION_LIFETIME, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm=algorithm_for(key), headers={"kid": kid, "typ": "JWT"})


def discover_token_url(fhir_base: str, session: requests.Session) -> str:
    url = fhir_base.rstrip("/") + "/.well-known/smart-configuration"
    response = session.get(url, timeout=(5, 10), allow_redirects=False)
    if response.status_code != 200:
        raise TokenRequestError(f"{url} answered {response.status_code}")
    token_url = response.json().get("token_endpoint")
    if not isinstance(token_url, str) or not token_url.startswith(("http://", "https://")):
        raise TokenRequestError(f"{url} names no token_endpoint")
    if origin(token_url) != origin(fhir_base):
        # A peer naming another server's token endpoint would receive the token we get there.
        raise TokenRequestError(f"{url} names a token endpoint on another origin ({token_url}); "
                                "configure token_url to use it")
    return token_url


def origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port


@dataclass
class BackendServicesClient:
    client_id: str
    key: object
    kid: str
    scope: str
    fhir_base: str
    token_url: str = ""
    session: requests.Session | None = None

    def __post_init__(self):
        self.session = self.session or requests.Session()
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        """A valid access token, asked for again only when the cached one is about to expire."""
        with self._lock:
            if self._token is None or time.time() >= self._expires - RENEW_BEFORE_SECONDS:
                self._token, self._expires = self._request()
            return self._token

    def invalidate(self) -> None:
        """After a 401: the next call asks for a new token."""
        with self._lock:
            self._token = None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def _request(self) -> tuple[str, float]:
        token_url = self.token_url or discover_token_url(self.fhir_base, self.session)
        self.token_url = token_url
        form = {"grant_type": "client_credentials", "scope": self.scope, "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": client_assertion(self.client_id, token_url, self.key, self.kid)}
        response = self.session.post(token_url, data=form, timeout=(5, 15), allow_redirects=False)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not body.get("access_token"):
            raise TokenRequestError(f"{token_url} refused a token for {self.client_id}: {response.status_code} "
                                    f"{body.get('error', '')} {body.get('error_description', '')}".strip())
        return body["access_token"], time.time() + float(body.get("expires_in") or 60)


_clients: dict[tuple, BackendServicesClient] = {}
_clients_lock = threading.Lock()


def backend_client(credentials, fhir_base: str, session: requests.Session | None = None) -> BackendServicesClient:
    """The process's one client for a link's or source's ``smart-backend`` credentials (an
    object with client_id, kid, private_key_file/env, token_url, scope), so that its token
    is shared by every request and renewed once."""
    key = (credentials.client_id, credentials.kid, credentials.token_url or fhir_base, credentials.scope)
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            private = load_private_key(credentials.private_key_file, credentials.private_key_env)
            found = BackendServicesClient(credentials.client_id, private, credentials.kid, credentials.scope,
                                          fhir_base, credentials.token_url, session)
            _clients[key] = found
        return found
