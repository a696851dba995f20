"""Malformed claims and hostile peers: a 401 or a refusal, never a 500 and never a wider grant."""
from __future__ import annotations

import json
import time

import jwt
import pytest
import requests

from fhirimg.auth.outbound import TokenRequestError, discover_token_url

from .stubs import JsonServer


@pytest.fixture
def stub():
    server = JsonServer()
    yield server
    server.stop()


def own(app, **claims) -> str:
    signing = app.extensions["fhirimg.auth"].keys.signing_key()
    now = int(time.time())
    base = {"iss": "http://localhost/auth", "aud": "http://localhost/fhir", "exp": now + 60, "scope": "system/*.rs"}
    # Signed as JWS over raw JSON: PyJWT's encode itself refuses some of these claims.
    payload = json.dumps({**base, **claims}).encode()
    return jwt.api_jws.PyJWS().encode(payload, signing.private_key, "ES256", headers={"kid": signing.kid})


@pytest.mark.parametrize("claims", [
    {"iss": ["http://localhost/auth"]},
    {"fhirimg_patients": "A"},          # a string would narrow to the patients "A" - refused instead
    {"fhirimg_patients": [1, 2]},
    {"patient": {"id": "A"}},
])
def test_malformed_claims_are_401(app, claims):
    response = app.test_client().get("/fhir/Patient", headers={"Authorization": f"Bearer {own(app, **claims)}"})
    assert response.status_code == 401, response.get_data(as_text=True)


@pytest.fixture
def introspecting(database, engine, stub, monkeypatch):
    from fhirimg.app import create_app
    from fhirimg.config import load_config
    config = load_config(env={}, read_files=False, overrides={"database_url": database[0], "auth": {
        "allow_loopback": True, "issuers": [{"issuer": "http://as.example", "introspection_url": stub.url + "/i",
                                            "audience": ["http://localhost/fhir"]}]}})
    return create_app(config, engine=engine).test_client()


@pytest.mark.parametrize("answer, status", [
    ({"active": True, "scope": "system/*.rs", "aud": "http://localhost/fhir", "exp": 4102444800}, 200),
    ({"active": True, "scope": "system/*.rs", "exp": 4102444800}, 401),  # no aud, one configured
    ({"active": True, "scope": "system/*.rs", "aud": {"x": 1}, "exp": 4102444800}, 401),
    ({"active": True, "scope": "system/*.rs", "aud": "http://localhost/fhir", "exp": "soon"}, 401),
    ({"active": True, "scope": "system/*.rs", "aud": "http://other/fhir", "exp": 4102444800}, 401),
    ({"active": False}, 401),
])
def test_introspection_answers_are_checked(introspecting, stub, answer, status):
    stub.body = answer
    response = introspecting.get("/fhir/Patient", headers={"Authorization": "Bearer opaque-token-1"})
    assert response.status_code == status, response.get_data(as_text=True)


def test_a_discovered_token_endpoint_on_another_origin_is_refused(stub):
    stub.body = {"token_endpoint": "http://attacker.example/token"}
    with pytest.raises(TokenRequestError, match="another origin"):
        discover_token_url(stub.url + "/fhir", requests.Session())
    stub.body = {"token_endpoint": stub.url + "/auth/token"}
    assert discover_token_url(stub.url + "/fhir", requests.Session()) == stub.url + "/auth/token"
