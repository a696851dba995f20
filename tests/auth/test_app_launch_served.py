"""The standalone launch against a real `fhirimg serve` (gunicorn, two worker processes)
over real sockets: a browser session signs in, the app exchanges the code - on whichever
worker - and uses the token on the FHIR API."""
from __future__ import annotations

import signal
import subprocess
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from fhirimg.auth import schema as _tables  # noqa: F401
from fhirimg.auth.users import User, add_user
from fhirimg.store import create_schema, make_engine

from ..factories import make_patient
from ..services import fhirimg_env, free_port, start_fhirimg, wait_for_http
from .launch_support import PASSWORD, FormFields, s256

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("launch")
    url = f"sqlite:///{workdir / 'fhirimg.db'}"
    engine = make_engine(url)
    create_schema(engine)
    add_user(engine, User("alice", "user/*.cruds"), PASSWORD, "tests")
    engine.dispose()
    port = free_port()
    env = fhirimg_env(database_url=url, var_dir=workdir / "var", log_level="WARNING")
    process = start_fhirimg(["serve", "--port", str(port), "--workers", "2"], workdir, env)
    root = f"http://127.0.0.1:{port}"
    wait_for_http(f"{root}/fhir/metadata", process, log=workdir / "fhirimg.log")
    yield root
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_a_browser_signs_in_and_the_app_uses_the_token(served):
    discovery = requests.get(f"{served}/fhir/.well-known/smart-configuration", timeout=10).json()
    assert discovery["authorization_endpoint"] == f"{served}/auth/authorize"
    verifier, state = "v" * 20 + "erifier-of-the-console-app-0123456789", "state-123"
    redirect = f"{served}/console/callback"
    browser = requests.Session()
    page = browser.get(discovery["authorization_endpoint"], timeout=10, params={
        "response_type": "code", "client_id": "fhirimg-console", "redirect_uri": redirect,
        "scope": "openid fhirUser online_access user/*.cruds", "state": state, "aud": f"{served}/fhir",
        "code_challenge": s256(verifier), "code_challenge_method": "S256"})
    assert page.status_code == 200 and page.headers["X-Frame-Options"] == "DENY"
    form = {**FormFields(page.text).fields, "username": "alice", "password": PASSWORD}
    signed_in = browser.post(discovery["authorization_endpoint"], data=form, allow_redirects=False, timeout=30)
    assert signed_in.status_code == 303, signed_in.text
    location = signed_in.headers["Location"]
    assert location.startswith(redirect + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["state"] == [state]
    app = requests.Session()  # the app's own requests: no cookies of the sign-in page
    exchanged = app.post(discovery["token_endpoint"], timeout=10, data={
        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect,
        "code_verifier": verifier, "client_id": "fhirimg-console"})
    assert exchanged.status_code == 200, exchanged.text
    body = exchanged.json()
    assert body["token_type"] == "Bearer" and "id_token" in body and "refresh_token" in body
    headers = {"Authorization": f"Bearer {body['access_token']}", "Content-Type": "application/fhir+json"}
    created = app.post(f"{served}/fhir/Patient", json=make_patient("launch-1"), headers=headers, timeout=10)
    assert created.status_code == 201, created.text
    for _ in range(4):  # spread over both workers
        read = app.get(f"{served}/fhir/Patient/{created.json()['id']}", headers=headers, timeout=10)
        assert read.status_code == 200
    replay = app.post(discovery["token_endpoint"], timeout=10, data={
        "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": redirect,
        "code_verifier": verifier, "client_id": "fhirimg-console"})
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    renewed = app.post(discovery["token_endpoint"], timeout=10, data={
        "grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": "fhirimg-console"})
    assert renewed.status_code == 200 and renewed.json()["access_token"] != body["access_token"]


def test_an_unregistered_redirect_is_never_followed(served):
    page = requests.get(f"{served}/auth/authorize", allow_redirects=False, timeout=10, params={
        "response_type": "code", "client_id": "fhirimg-console", "redirect_uri": "https://evil.example/cb",
        "scope": "user/*.rs", "state": "s", "aud": f"{served}/fhir", "code_challenge": s256("x" * 43),
        "code_challenge_method": "S256"})
    assert page.status_code == 400 and "Location" not in page.headers
