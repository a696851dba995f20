"""Tokens for tests, the way a real client gets them: a registered client with its own key
signs a client assertion and asks the server's token endpoint (backend-services.html)."""
from __future__ import annotations

import functools
import json
import time
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from fhirimg.auth.clients import Client, add_client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALL = "system/*.cruds"


class ClientKey:
    """A client's key pair: private for signing assertions, public JWK for the registry."""

    def __init__(self, alg: str = "ES384"):
        self.alg = alg
        self.kid = uuid.uuid4().hex[:16]
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}[alg]
            self.private = ec.generate_private_key(curve)
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.public_jwk = {**jwk, "kid": self.kid, "alg": alg}

    @property
    def jwks(self) -> dict:
        return {"keys": [self.public_jwk]}

    def assertion(self, client_id: str, token_url: str, lifetime: int = 240, **overrides) -> str:
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + lifetime,
                  "iat": now, "jti": uuid.uuid4().hex}
        claims.update(overrides.pop("claims", {}))
        headers = {"kid": self.kid, "typ": "JWT", **overrides.pop("headers", {})}
        return jwt.encode(claims, self.private, algorithm=self.alg, headers=headers)


@functools.lru_cache(maxsize=None)
def shared_key(alg: str = "ES384") -> ClientKey:
    """One key per algorithm for the whole run (RSA keys take ~100 ms to make)."""
    return ClientKey(alg)


def register(engine, client_id: str = "test-client", scopes: str = ALL, key: ClientKey | None = None,
             **extra) -> ClientKey:
    key = key or shared_key()
    add_client(engine, Client(client_id, client_id, scopes, jwks=key.jwks, **extra), "tests", replace=True)
    return key


def token_form(key: ClientKey, client_id: str, scope: str, token_url: str = "http://localhost/auth/token",
               **assertion) -> dict:
    return {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "scope": scope,
            "client_assertion": key.assertion(client_id, token_url, **assertion)}


def token_url_of(app) -> str:
    base = app.config["FHIRIMG"]["base_url"] or "http://localhost/fhir"
    return base[: -len("/fhir")] + "/auth/token" if base.endswith("/fhir") else base + "/auth/token"


def get_token(test_client, engine, scope: str = ALL, client_id: str = "test-client",
              allowed: str | None = None, **extra) -> str:
    """A bearer token from the app's own token endpoint (registering the client first)."""
    key = register(engine, client_id, allowed or scope, **extra)
    response = test_client.post("/auth/token", data=token_form(key, client_id, scope,
                                                               token_url_of(test_client.application)))
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["access_token"]


def authorized(app, scope: str = ALL, client_id: str = "test-client", **extra):
    """A Flask test client that sends a bearer token for `scope` with every request."""
    test_client = app.test_client()
    token = get_token(test_client, app.extensions["fhirimg.engine"], scope, client_id, **extra)
    test_client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return test_client


ANONYMOUS = {"mode": "none", "allow_anonymous": True}
