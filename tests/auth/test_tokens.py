"""The built-in SMART Backend Services token endpoint and the resource server's token checks."""
from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from fhirimg.auth.clients import set_disabled

from ..auth_support import ClientKey, register, shared_key, token_form
from ..conftest import table_counts

TOKEN_URL = "http://localhost/auth/token"


def ask(client, form):
    return client.post("/auth/token", data=form)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def web(app):
    return app.test_client()


@pytest.mark.parametrize("alg", ["ES384", "RS384", "ES256", "RS256"])
def test_a_registered_client_gets_a_token_that_works(app, engine, web, alg):
    key = register(engine, f"client-{alg}", "system/*.rs", key=shared_key(alg))
    response = ask(web, token_form(key, f"client-{alg}", "system/Patient.rs"))
    assert response.status_code == 200, response.json
    body = response.json
    assert body["token_type"] == "bearer" and body["expires_in"] <= 300 and body["scope"] == "system/Patient.rs"
    assert response.headers["Cache-Control"] == "no-store"
    assert "refresh_token" not in body
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "http://localhost/fhir" and claims["iss"] == "http://localhost/auth"
    assert web.get("/fhir/Patient", headers=bearer(body["access_token"])).status_code == 200
    # scope was cut to what was asked: no search of ImagingStudy
    assert web.get("/fhir/ImagingStudy", headers=bearer(body["access_token"])).status_code == 403


def test_granted_scope_is_the_intersection_of_asked_and_allowed(engine, web):
    key = register(engine, "narrow", "system/ImagingStudy.rs")
    body = ask(web, token_form(key, "narrow", "system/*.cruds")).json
    assert body["scope"] == "system/ImagingStudy.rs"
    refused = ask(web, token_form(key, "narrow", "system/Patient.rs"))
    assert refused.status_code == 400 and refused.json["error"] == "invalid_scope"


def oauth_error(response, status: int, error: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.json["error"] == error and response.json["error_description"]


def test_a_replayed_assertion_is_invalid_client(engine, web):
    key = register(engine, "replayer", "system/*.rs")
    form = token_form(key, "replayer", "system/*.rs")
    assert ask(web, form).status_code == 200
    oauth_error(ask(web, form), 401, "invalid_client")


def test_the_replay_store_is_the_database_so_a_restarted_server_refuses_too(config, engine, web):
    from fhirimg.app import create_app
    key = register(engine, "replayer2", "system/*.rs")
    form = token_form(key, "replayer2", "system/*.rs")
    assert ask(web, form).status_code == 200
    restarted = create_app(config, engine=engine).test_client()
    oauth_error(ask(restarted, form), 401, "invalid_client")


@pytest.mark.parametrize("change, why", [
    # Lifetimes, not instants: a time taken at collection was 10 minutes ahead only for the
    # first 4.5 minutes of a run, and the suite takes longer.
    ({"lifetime": 600}, "valid for 10 minutes"),
    ({"lifetime": -120}, "expired"),
    ({"claims": {"aud": "http://elsewhere.example/auth/token"}}, "another audience"),
    ({"claims": {"sub": "someone-else"}}, "sub is not the client"),
    ({"headers": {"jku": "http://attacker.example/jwks"}}, "a jku that is not registered"),
    ({"headers": {"kid": "unknown-kid"}}, "an unknown kid"),
])
def test_bad_assertions_are_invalid_client(engine, web, change, why):
    key = register(engine, "c1", "system/*.rs")
    oauth_error(ask(web, token_form(key, "c1", "system/*.rs", **change)), 401, "invalid_client")


def test_an_assertion_signed_by_another_key_is_invalid_client(engine, web):
    register(engine, "c2", "system/*.rs")
    impostor = ClientKey("ES384")
    impostor.kid = shared_key().kid  # same kid, other key
    oauth_error(ask(web, token_form(impostor, "c2", "system/*.rs")), 401, "invalid_client")


def test_an_unknown_or_disabled_client_is_invalid_client(engine, web):
    key = register(engine, "c3", "system/*.rs")
    oauth_error(ask(web, token_form(key, "nobody", "system/*.rs")), 401, "invalid_client")
    set_disabled(engine, "c3", True, "test")
    oauth_error(ask(web, token_form(key, "c3", "system/*.rs")), 401, "invalid_client")


def test_other_grants_and_bad_requests_are_rfc6749_errors(engine, web):
    key = register(engine, "c4", "system/*.rs")
    form = token_form(key, "c4", "system/*.rs")
    oauth_error(ask(web, {**form, "grant_type": "password"}), 400, "unsupported_grant_type")
    oauth_error(ask(web, {**form, "client_assertion_type": "x"}), 400, "invalid_request")
    oauth_error(web.post("/auth/token", json=form), 400, "invalid_request")


# -- the resource server ----------------------------------------------------------------------
def own_token(app, claims: dict, alg: str = "ES256") -> str:
    """A token signed with the server's own current key, with some claims changed."""
    keys = app.extensions["fhirimg.auth"].keys
    signing = keys.signing_key()
    now = int(time.time())
    base = {"iss": "http://localhost/auth", "aud": "http://localhost/fhir", "sub": "x", "client_id": "x",
            "iat": now, "exp": now + 120, "scope": "system/*.rs"}
    return jwt.encode({**base, **claims}, signing.private_key, algorithm=alg, headers={"kid": signing.kid})


def assert_401(response):
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json["resourceType"] == "OperationOutcome"


def test_no_token_is_401_but_metadata_and_discovery_are_public(web):
    response = web.get("/fhir/Patient")
    assert_401(response)
    assert web.delete("/fhir/Patient/any").status_code == 401
    assert web.get("/fhir/metadata").status_code == 200
    discovery = web.get("/fhir/.well-known/smart-configuration", headers={"Accept": "application/fhir+xml"})
    assert discovery.status_code == 200 and discovery.mimetype == "application/json"
    assert discovery.json["token_endpoint"] == TOKEN_URL
    assert "S256" in discovery.json["code_challenge_methods_supported"]
    assert {"client-confidential-asymmetric", "permission-v2", "smart-imaging-access"} <= \
        set(discovery.json["capabilities"])
    security = web.get("/fhir/metadata").json["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"][0] == {"url": "token", "valueUri": TOKEN_URL}


def test_a_valid_own_token_is_accepted(app, web):
    assert web.get("/fhir/Patient", headers=bearer(own_token(app, {}))).status_code == 200


@pytest.mark.parametrize("claims, why", [
    ({"exp": int(time.time()) - 1}, "expired by one second"),
    ({"nbf": int(time.time()) + 600}, "not valid yet"),
    ({"aud": "http://other.example/fhir"}, "a token for another resource server"),
    ({"iss": "http://attacker.example/auth"}, "an untrusted issuer"),
])
def test_tokens_that_fail_a_check_are_401(app, web, claims, why):
    assert_401(web.get("/fhir/Patient", headers=bearer(own_token(app, claims))))


def test_alg_none_is_401(web):
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=")
    now = int(time.time())
    payload = base64.urlsafe_b64encode(json.dumps({
        "iss": "http://localhost/auth", "aud": "http://localhost/fhir", "exp": now + 60,
        "scope": "system/*.cruds"}).encode()).rstrip(b"=")
    assert_401(web.get("/fhir/Patient", headers=bearer(f"{header.decode()}.{payload.decode()}.")))


def test_hs256_signed_with_the_public_key_is_401(app, web):
    keys = app.extensions["fhirimg.auth"].keys
    signing = keys.signing_key()
    public_json = json.dumps(signing.public_jwk).encode()
    now = int(time.time())
    # Built by hand: PyJWT itself refuses to HMAC-sign with a public key.
    import hashlib
    import hmac

    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    signing_input = part({"alg": "HS256", "typ": "JWT", "kid": signing.kid}) + "." + part(
        {"iss": "http://localhost/auth", "aud": "http://localhost/fhir", "exp": now + 60, "scope": "system/*.cruds"})
    mac = hmac.new(public_json, signing_input.encode(), hashlib.sha256).digest()
    forged = signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    assert_401(web.get("/fhir/Patient", headers=bearer(forged)))


def test_unknown_kid_is_401_and_a_rotated_key_is_picked_up(app, engine, web):
    from fhirimg.auth.keys import KeyRing
    stranger = ClientKey("ES256")
    now = int(time.time())
    claims = {"iss": "http://localhost/auth", "aud": "http://localhost/fhir", "exp": now + 60,
              "scope": "system/*.rs", "client_id": "x"}
    assert_401(web.get("/fhir/Patient", headers=bearer(
        jwt.encode(claims, stranger.private, algorithm="ES256", headers={"kid": "nope"}))))
    # Another node rotates the key: this node learns the new kid when a token names it
    # (once the unknown-kid cooldown has passed).
    other_node = KeyRing(engine, 0.0001, 300)
    fresh = other_node.sign(claims)
    app.extensions["fhirimg.auth"].keys._unknown_at = -1e18
    assert web.get("/fhir/Patient", headers=bearer(fresh)).status_code == 200


def test_token_endpoint_writes_only_the_jti(engine, web):
    key = register(engine, "c5", "system/*.rs")
    before = table_counts(engine)
    assert ask(web, token_form(key, "c5", "system/*.rs")).status_code == 200
    after = table_counts(engine)
    changed = {t for t in after if after[t] != before[t]}
    assert changed <= {"auth_assertion_jti", "auth_signing_key"}


def test_a_spoofed_host_header_does_not_make_a_token_for_another_server_acceptable(app, web):
    other = own_token(app, {"aud": "http://b.example/fhir", "iss": "http://b.example/auth"})
    response = web.get("/fhir/Patient", headers={**bearer(other), "Host": "b.example"})
    assert_401(response)
    discovery = web.get("/fhir/.well-known/smart-configuration", headers={"Host": "b.example"}).json
    assert not discovery["token_endpoint"].startswith("http://b.example")
