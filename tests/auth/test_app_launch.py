"""SMART App Launch, standalone: the authorization endpoint, the code exchange, and what the
token then opens - through the Flask test client, on SQLite and PostgreSQL."""
from __future__ import annotations

import time

import jwt
import pytest
from sqlalchemy import text

from fhirimg.auth.clients import Client, add_client, get_client, set_disabled
from fhirimg.auth.users import set_user_disabled

from ..audit.trail import all_events, code_of, details_of, outcome_of
from ..auth_support import register, shared_key
from ..factories import make_patient
from .launch_support import (
    BASE,
    CONSOLE_REDIRECT,
    PASSWORD,
    ROOT,
    FormFields,
    Launch,
    error_of,
    make_user,
    quick_hashing,
)


@pytest.fixture(autouse=True)
def _quick_hashing(monkeypatch):
    quick_hashing(monkeypatch)


@pytest.fixture
def web(app):
    return app.test_client()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def launch_context(app):
    return app.extensions["fhirimg.auth"].launch


# -- the whole launch ----------------------------------------------------------------------------
def test_a_signed_in_user_gets_a_token_that_reads_fhir(app, engine, client, web):
    assert client.put("/fhir/Patient/p1", json={**make_patient(), "id": "p1"}).status_code == 201
    make_user(engine, fhir_user="Practitioner/dr-a")
    launch = Launch(scope="openid fhirUser user/*.rs", nonce="nonce-1")
    body = launch.token(web)
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 300
    assert body["scope"] == "openid fhirUser user/*.rs" and "refresh_token" not in body
    read = web.get("/fhir/Patient/p1", headers=bearer(body["access_token"]))
    assert read.status_code == 200 and read.json["id"] == "p1"
    assert web.post("/fhir/Patient", json=make_patient(), headers=bearer(body["access_token"])).status_code == 403
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["client_id"] == "fhirimg-console" and claims["aud"] == BASE


def test_the_id_token_is_verifiable_with_the_published_keys(engine, web):
    make_user(engine, fhir_user="Practitioner/dr-a")
    body = Launch(scope="openid fhirUser user/*.rs", nonce="nonce-7").token(web)
    discovery = web.get("/auth/.well-known/openid-configuration").json
    assert discovery["issuer"] == ROOT + "/auth" and discovery["jwks_uri"] == ROOT + "/auth/jwks"
    header = jwt.get_unverified_header(body["id_token"])
    assert header["alg"] == "RS256" and header["alg"] in discovery["id_token_signing_alg_values_supported"]
    keys = {k["kid"]: k for k in web.get("/auth/jwks").json["keys"]}
    key = jwt.PyJWK(keys[header["kid"]]).key
    claims = jwt.decode(body["id_token"], key, algorithms=["RS256"], audience="fhirimg-console",
                        issuer=discovery["issuer"])
    assert claims["sub"] == "alice" and claims["fhirUser"] == "Practitioner/dr-a" and claims["nonce"] == "nonce-7"
    # an id_token is not an access token: refused by the resource server
    assert web.get("/fhir/Patient", headers=bearer(body["id_token"])).status_code == 401


def test_without_openid_there_is_no_id_token_and_without_a_fhir_user_no_claim(engine, web):
    make_user(engine)
    assert "id_token" not in Launch(scope="user/*.rs").token(web)
    body = Launch(scope="openid fhirUser user/*.rs").token(web)
    assert "fhirUser" not in jwt.decode(body["id_token"], options={"verify_signature": False})


def test_granted_scopes_are_requested_within_the_users_within_the_apps(engine, web):
    make_user(engine, scopes="user/Patient.rs user/ImagingStudy.r user/Task.cu")
    add_client(engine, Client("narrow-app", "narrow", "openid user/*.rs", public=True,
                              redirect_uris=["https://app.example/cb"]), "tests")
    launch = Launch("narrow-app", "https://app.example/cb",
                    scope="openid fhirUser profile user/*.rs user/Task.cu system/*.rs patient/*.rs")
    body = launch.token(web)
    # by hand: openid (fhirUser and profile are not the app's), user/Patient.rs and
    # user/ImagingStudy.r (the user's, within the app's *.rs); Task.cu is the user's but not
    # the app's; system/ and patient/ are nobody's here
    assert body["scope"] == "openid user/Patient.rs user/ImagingStudy.r"
    token = body["access_token"]
    assert web.get("/fhir/Patient", headers=bearer(token)).status_code == 200
    assert web.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 403  # r, not s


def test_no_scope_left_is_access_denied_back_to_the_app(engine, web):
    make_user(engine, scopes="user/Task.rs")
    launch = Launch(scope="user/Patient.rs")
    assert error_of(launch.sign_in(web))["error"] == "access_denied"


def test_a_patient_limited_user_gets_that_patient_as_context(engine, client, web):
    for pid in ("p1", "p2"):
        assert client.put(f"/fhir/Patient/{pid}", json={**make_patient(), "id": pid}).status_code == 201
    make_user(engine, scopes="user/*.rs patient/*.rs", patients=["p1"])
    add_client(engine, Client("patient-app", "p", "patient/*.rs user/*.rs", public=True,
                              redirect_uris=["https://app.example/cb"]), "tests")
    body = Launch("patient-app", "https://app.example/cb", scope="patient/*.rs user/*.rs").token(web)
    assert body["patient"] == "p1" and set(body["scope"].split()) == {"user/*.rs", "patient/*.rs"}
    found = web.get("/fhir/Patient", headers=bearer(body["access_token"])).json
    assert [e["resource"]["id"] for e in found.get("entry", [])] == ["p1"]
    assert web.get("/fhir/Patient/p2", headers=bearer(body["access_token"])).status_code in (403, 404)


# -- the code ------------------------------------------------------------------------------------
def test_a_wrong_verifier_is_invalid_grant_and_the_code_is_spent(engine, web):
    make_user(engine)
    launch = Launch()
    code = launch.code_from(launch.sign_in(web))
    refused = launch.exchange(web, code, code_verifier="x" * 43)
    assert refused.status_code == 400 and refused.json["error"] == "invalid_grant"
    assert launch.exchange(web, code).json["error"] == "invalid_grant"  # the right one is too late now


def test_a_code_works_once(engine, web):
    make_user(engine)
    launch = Launch()
    code = launch.code_from(launch.sign_in(web))
    first = launch.exchange(web, code)
    assert first.status_code == 200
    again = launch.exchange(web, code)
    assert again.status_code == 400 and again.json["error"] == "invalid_grant"
    # a replay revokes nothing else: the token of the first exchange still works
    assert web.get("/fhir/Patient", headers=bearer(first.json["access_token"])).status_code == 200


def test_an_expired_code_is_refused(app, engine, web):
    make_user(engine)
    launch = Launch()
    code = launch.code_from(launch.sign_in(web))
    launch_context(app).codes.clock = lambda: time.time() + 61
    refused = launch.exchange(web, code)
    assert refused.status_code == 400 and "expired" in refused.json["error_description"]


@pytest.mark.parametrize("override, says", [
    ({"redirect_uri": ROOT + "/console/other"}, "redirect_uri"),
    ({"client_id": "fhirimg-viewer"}, "another client"),
    ({"code_verifier": None}, "code_verifier"),
])
def test_the_code_is_bound_to_client_redirect_and_verifier(engine, web, override, says):
    make_user(engine)
    launch = Launch()
    refused = launch.exchange(web, launch.code_from(launch.sign_in(web)), **override)
    assert refused.status_code == 400 and refused.json["error"] == "invalid_grant"
    assert says in refused.json["error_description"]


def test_codes_are_stored_hashed(engine, web):
    make_user(engine)
    launch = Launch()
    code = launch.code_from(launch.sign_in(web))
    with engine.connect() as conn:
        dump = str(conn.execute(text("SELECT * FROM auth_code")).all())
    assert code not in dump and "code_hash" not in dump


# -- the authorization request -------------------------------------------------------------------
@pytest.mark.parametrize("override", [
    {"client_id": "nobody"},
    {"client_id": None},
    {"redirect_uri": "https://evil.example/console/callback"},
    {"redirect_uri": CONSOLE_REDIRECT + "/more"},  # a registered prefix is not a match
    {"redirect_uri": CONSOLE_REDIRECT + "?x=1"},
    {"redirect_uri": None},
])
def test_a_bad_client_or_redirect_is_an_error_page_never_a_redirect(web, override):
    params = {k: v for k, v in {**Launch().params, **override}.items() if v is not None}
    response = web.get("/auth/authorize", query_string=params)
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.mimetype == "text/html" and "Cannot sign in" in response.get_data(as_text=True)
    assert response.headers["X-Frame-Options"] == "DENY"


def test_a_disabled_client_gets_the_error_page(engine, web):
    set_disabled(engine, "fhirimg-console", True, "tests")
    response = Launch().authorize(web)
    assert response.status_code == 400 and "Location" not in response.headers


@pytest.mark.parametrize("override, error", [
    ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
    ({"code_challenge_method": None}, "invalid_request"),
    ({"code_challenge_method": "plain"}, "invalid_request"),
    ({"code_challenge": "short"}, "invalid_request"),
    ({"aud": "https://other.example/fhir"}, "invalid_request"),
    ({"aud": None}, "invalid_request"),
    ({"response_type": "token"}, "unsupported_response_type"),
    ({"scope": None}, "invalid_scope"),
])
def test_other_request_errors_go_back_to_the_app_with_the_state(web, override, error):
    launch = Launch(**override)
    found = error_of(launch.authorize(web))
    assert found["error"] == error and found["state"] == launch.state and "code" not in found


def test_plain_pkce_is_refused_and_says_so(web):
    found = error_of(Launch(code_challenge_method="plain").authorize(web))
    assert "plain is not supported" in found["error_description"]


def test_state_is_required(web):
    launch = Launch()
    del launch.params["state"]
    found = error_of(launch.authorize(web))
    assert found["error"] == "invalid_request" and "state" not in found


def test_the_resource_parameter_is_a_synonym_of_aud(engine, web):
    make_user(engine)
    launch = Launch(aud=None, resource=BASE)
    assert launch.code_from(launch.sign_in(web))


def test_an_authorization_request_by_post_shows_the_form(web):
    launch = Launch()
    page = web.post("/auth/authorize", data=launch.params)
    assert page.status_code == 200 and "csrf_token" in FormFields(page.get_data(as_text=True)).fields


def test_prompt_none_is_login_required(web):
    assert error_of(Launch(prompt="none").authorize(web))["error"] == "login_required"


def test_the_sign_in_page_is_locked_down(web):
    page = Launch().authorize(web)
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "script-src" not in policy
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["Cache-Control"] == "no-store"
    assert "<script" not in page.get_data(as_text=True)
    cookie = page.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


# -- sign-in -------------------------------------------------------------------------------------
def test_without_the_csrf_token_there_is_no_code(engine, web):
    make_user(engine)
    launch = Launch()
    refused = launch.sign_in(web, csrf_token=None)
    assert refused.status_code == 400 and "Location" not in refused.headers
    assert "expired" in refused.get_data(as_text=True)


def test_a_csrf_token_not_matching_the_cookie_gives_no_code(engine, web):
    make_user(engine)
    launch = Launch()
    refused = launch.sign_in(web, csrf_token="A" * 43)
    assert refused.status_code == 400 and "Location" not in refused.headers


def test_without_the_cookie_there_is_no_code(app, engine, web):
    make_user(engine)
    launch = Launch()
    page = launch.authorize(web)
    other_browser = app.test_client()  # the form's token, but not the browser that got the cookie
    refused = launch.sign_in(other_browser, page=page)
    assert refused.status_code == 400 and "Location" not in refused.headers


def sign_in_events(engine) -> list[dict]:
    return [e for e in all_events(engine) if code_of(e) == "110122" and details_of(e).get("step") == "sign-in"]


@pytest.mark.parametrize("username, password, why", [
    ("alice", "wrong password 123", "wrong password"),
    ("mallory", PASSWORD, "unknown user"),
])
def test_a_failed_sign_in_says_only_wrong_and_is_audited(engine, web, username, password, why):
    make_user(engine)
    response = Launch().sign_in(web, username, password)
    assert response.status_code == 200 and "Location" not in response.headers
    assert "Wrong user name or password." in response.get_data(as_text=True)
    (event,) = sign_in_events(engine)
    assert outcome_of(event) == "4" and why in event["outcome"]["detail"][0]["text"]
    assert event["agent"][0]["who"]["identifier"]["value"] == "fhirimg-console"
    assert details_of(event)["user name tried"] == username
    assert PASSWORD not in str(all_events(engine))


def test_a_disabled_user_cannot_sign_in_and_is_told_only_wrong(engine, web):
    make_user(engine)
    set_user_disabled(engine, "alice", True, "tests")
    response = Launch().sign_in(web)
    assert response.status_code == 200 and "Wrong user name or password." in response.get_data(as_text=True)
    assert "account disabled" in sign_in_events(engine)[0]["outcome"]["detail"][0]["text"]


def test_a_user_disabled_after_sign_in_gets_no_token_for_the_code(engine, web):
    make_user(engine)
    launch = Launch()
    code = launch.code_from(launch.sign_in(web))
    set_user_disabled(engine, "alice", True, "tests")
    assert launch.exchange(web, code).json["error"] == "invalid_grant"


def test_a_successful_sign_in_and_the_token_name_the_user_in_the_audit_trail(engine, client, web):
    assert client.put("/fhir/Patient/p1", json={**make_patient(), "id": "p1"}).status_code == 201
    make_user(engine)
    token = Launch().token(web)["access_token"]
    (signed_in,) = sign_in_events(engine)
    assert outcome_of(signed_in) == "0"
    assert [a["who"].get("display") for a in signed_in["agent"] if a["requestor"]] == ["alice"]
    assert web.get("/fhir/Patient/p1", headers={**bearer(token), "X-Request-Id": "user-read"}).status_code == 200
    (read,) = [e for e in all_events(engine) if details_of(e).get("X-Request-Id") == "user-read"]
    whos = [a["who"] for a in read["agent"]]
    assert {"identifier": {"value": "fhirimg-console"}} in whos and {"display": "alice"} in whos


def test_failures_are_throttled_per_user_even_for_the_right_password(engine, web):
    make_user(engine)
    for _ in range(5):
        assert "Wrong" in Launch().sign_in(web, password="not the password").get_data(as_text=True)
    throttled = Launch().sign_in(web)
    assert throttled.status_code == 429 and "Location" not in throttled.headers
    assert "throttled" in sign_in_events(engine)[-1]["outcome"]["detail"][0]["text"]
    make_user(engine, "bob")
    assert Launch().sign_in(web, "bob").status_code == 303  # another user is not held up


def test_failures_are_throttled_per_address(app, engine, web):
    app.extensions["fhirimg.auth"].throttle.per_address = 3
    make_user(engine)
    for name in ("x1", "x2", "x3"):
        Launch().sign_in(web, name, "guess guess guess")
    assert Launch().sign_in(web).status_code == 429


def test_the_throttle_forgets_after_its_window(app, engine, web):
    make_user(engine)
    for _ in range(5):
        Launch().sign_in(web, password="not the password")
    app.extensions["fhirimg.auth"].throttle.clock = lambda: time.time() + 901
    assert Launch().sign_in(web).status_code == 303


# -- refresh, revocation, userinfo ---------------------------------------------------------------
def refresh(web, token: str, client_id: str = "fhirimg-console", **extra):
    return web.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                         "client_id": client_id, **extra})


def test_online_access_refresh_tokens_rotate_and_a_reused_one_revokes_the_session(engine, web):
    make_user(engine)
    body = Launch(scope="openid online_access user/*.rs").token(web)
    first = body["refresh_token"]
    renewed = refresh(web, first)
    assert renewed.status_code == 200 and renewed.json["scope"] == "openid online_access user/*.rs"
    second = renewed.json["refresh_token"]
    assert second != first and "id_token" not in renewed.json
    assert web.get("/fhir/Patient", headers=bearer(renewed.json["access_token"])).status_code == 200
    assert refresh(web, first).json["error"] == "invalid_grant"  # reused: the family is revoked
    assert refresh(web, second).json["error"] == "invalid_grant"


def test_a_refresh_may_narrow_but_not_widen(engine, web):
    make_user(engine, scopes="user/*.cruds")
    token = Launch(scope="online_access user/Patient.rs").token(web)["refresh_token"]
    narrowed = refresh(web, token, scope="online_access user/Patient.r user/Task.c")
    assert narrowed.json["scope"] == "online_access user/Patient.r"


def test_a_refresh_token_is_the_clients_own(engine, web):
    make_user(engine)
    token = Launch(scope="online_access user/*.rs").token(web)["refresh_token"]
    assert refresh(web, token, client_id="fhirimg-viewer").json["error"] == "invalid_grant"


def test_no_refresh_for_a_disabled_user_or_after_revocation(engine, web):
    make_user(engine)
    token = Launch(scope="online_access user/*.rs").token(web)["refresh_token"]
    set_user_disabled(engine, "alice", True, "tests")
    set_user_disabled(engine, "alice", False, "tests")
    assert refresh(web, token).json["error"] == "invalid_grant"  # disabling revoked it
    token = Launch(scope="online_access user/*.rs").token(web)["refresh_token"]
    revoked = web.post("/auth/revoke", data={"token": token, "client_id": "fhirimg-console"})
    assert revoked.status_code == 200
    assert refresh(web, token).json["error"] == "invalid_grant"


def test_offline_access_is_not_granted(engine, web):
    make_user(engine)
    add_client(engine, Client("offline-app", "o", "offline_access online_access user/*.rs", public=True,
                              redirect_uris=["https://app.example/cb"]), "tests")
    body = Launch("offline-app", "https://app.example/cb", scope="offline_access user/*.rs").token(web)
    assert body["scope"] == "user/*.rs" and "refresh_token" not in body


def test_userinfo_names_the_signed_in_user(engine, web):
    make_user(engine, fhir_user="Practitioner/dr-a")
    token = Launch(scope="openid fhirUser profile user/*.rs").token(web)["access_token"]
    info = web.get("/auth/userinfo", headers=bearer(token))
    assert info.status_code == 200
    assert info.json == {"sub": "alice", "fhirUser": "Practitioner/dr-a", "preferred_username": "alice"}
    no_openid = Launch(scope="user/*.rs").token(web)["access_token"]
    assert web.get("/auth/userinfo", headers=bearer(no_openid)).status_code == 403
    assert web.get("/auth/userinfo").status_code == 401


# -- clients -------------------------------------------------------------------------------------
def test_a_public_client_cannot_use_client_credentials(web):
    refused = web.post("/auth/token", data={"grant_type": "client_credentials", "client_id": "fhirimg-console",
                                            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:"
                                            "jwt-bearer", "client_assertion": jwt.encode(
                                                {"iss": "fhirimg-console", "sub": "fhirimg-console"},
                                                shared_key().private, "ES384", headers={"kid": "k"})})
    assert refused.status_code == 401 and refused.json["error"] == "invalid_client"


def test_a_confidential_client_must_authenticate_to_exchange_a_code(engine, web):
    make_user(engine)
    key = register(engine, "conf-app", "openid user/*.rs", redirect_uris=["https://app.example/cb"])
    launch = Launch("conf-app", "https://app.example/cb", scope="user/*.rs")
    code = launch.code_from(launch.sign_in(web))
    assert launch.exchange(web, code).json["error"] == "invalid_client"  # client_id alone is not enough
    code = launch.code_from(launch.sign_in(web))
    assertion = key.assertion("conf-app", ROOT + "/auth/token")
    done = launch.exchange(web, code, client_id=None, client_assertion=assertion,
                           client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    assert done.status_code == 200, done.json


def test_the_console_and_viewer_are_registered_once(app, engine, config):
    from fhirimg.app import create_app
    create_app(config, engine=engine)  # a second start (or worker) changes nothing
    console, viewer = get_client(engine, "fhirimg-console"), get_client(engine, "fhirimg-viewer")
    assert console.public and console.redirect_uris == ["/console/callback"]
    assert viewer.public and viewer.redirect_uris == ["/viewer/callback"]
    with engine.connect() as conn:
        adds = conn.execute(text("SELECT count(*) FROM auth_client_change WHERE action = 'add' "
                                 "AND client_id IN ('fhirimg-console', 'fhirimg-viewer')")).scalar()
    assert adds == 2


def test_the_viewers_redirect_follows_the_configured_base_url(config, engine):
    from fhirimg.app import create_app
    app = create_app({**config, "base_url": "https://pacs.example.org/fhir"}, engine=engine)
    web = app.test_client()
    launch = Launch("fhirimg-viewer", "https://pacs.example.org/viewer/callback", aud="https://pacs.example.org/fhir")
    page = launch.authorize(web)
    assert page.status_code == 200
    assert "__Host-fhirimg-signin" in page.headers["Set-Cookie"] and "Secure" in page.headers["Set-Cookie"]
    assert Launch("fhirimg-viewer", ROOT + "/viewer/callback",
                  aud="https://pacs.example.org/fhir").authorize(web).status_code == 400


# -- discovery -----------------------------------------------------------------------------------
def test_smart_configuration_advertises_the_launch(web):
    found = web.get("/fhir/.well-known/smart-configuration").json
    assert found["authorization_endpoint"] == ROOT + "/auth/authorize"
    assert {"authorization_code", "client_credentials"} <= set(found["grant_types_supported"])
    assert found["code_challenge_methods_supported"] == ["S256"]
    assert {"launch-standalone", "client-public", "permission-user", "sso-openid-connect",
            "permission-online"} <= set(found["capabilities"])
    assert not {"context-standalone-patient", "launch-ehr", "permission-offline"} & set(found["capabilities"])
    assert "launch/patient" not in found["scopes_supported"]
    assert found["issuer"] == web.get("/auth/.well-known/openid-configuration").json["issuer"]


def test_the_code_exchange_keeps_the_cors_configuration(config, engine):
    from fhirimg.app import create_app
    origin = "https://viewer.example.org"
    app = create_app({**config, "cors": {**config["cors"], "allowed_origins": [origin]}}, engine=engine)
    web = app.test_client()
    make_user(engine)
    launch = Launch()
    code = launch.code_from(launch.sign_in(web))
    preflight = web.options("/auth/token", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204 and "POST" in preflight.headers["Access-Control-Allow-Methods"]
    answer = web.post("/auth/token", headers={"Origin": origin}, data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": launch.redirect_uri,
            "code_verifier": launch.verifier, "client_id": launch.client_id})
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == origin
    other = web.post("/auth/token", headers={"Origin": "https://evil.example"}, data={"grant_type": "x"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_anonymous_mode_has_no_sign_in(config, engine):
    from fhirimg.app import create_app
    from fhirimg.auth.clients import list_clients

    from ..auth_support import ANONYMOUS
    app = create_app({**config, "auth": {**config["auth"], **ANONYMOUS}}, engine=engine)
    response = Launch().authorize(app.test_client())
    assert response.status_code == 404 and "Location" not in response.headers
    assert not [c for c in list_clients(engine) if c.client_id.startswith("fhirimg-")]
