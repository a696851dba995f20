"""Tokens of an independent authorization server: node-oidc-provider (OpenID certified),
started on loopback, issuing client_credentials tokens for a resource indicator - as RFC
9068 JWTs checked against its JWKS, and as opaque tokens checked by RFC 7662 introspection."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import requests

from fhirimg.app import create_app
from fhirimg.config import load_config

from ..factories import make_patient
from ..services import free_port, require_or_skip, wait_for_port

PEER = Path(__file__).resolve().parents[1] / "peers" / "oidc"
BASE = "http://localhost/fhir"  # what the Flask test client's requests reach


class OidcPeer:
    def __init__(self, jwt_resource: str, opaque_resource: str, workdir: Path):
        node = shutil.which("node")
        if node is None or not (PEER / "node_modules" / "oidc-provider").is_dir():
            require_or_skip("the oidc-provider peer needs node and `npm install` in tests/peers/oidc "
                            "(.ci/run does it)")
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"oidc-{self.port}.log", "wb")
        self.process = subprocess.Popen([node, str(PEER / "server.mjs"), str(self.port), jwt_resource,
                                         opaque_resource], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(self.port, timeout=30)

    def token(self, scope: str, resource: str = BASE) -> str:
        response = requests.post(f"{self.issuer}/token", auth=("ehr", "ehr-secret"), timeout=10,
                                 data={"grant_type": "client_credentials", "scope": scope, "resource": resource})
        assert response.status_code == 200, response.text
        return response.json()["access_token"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("oidc")
    jwt_peer = OidcPeer(BASE, "http://opaque.invalid/fhir", workdir)
    opaque_peer = OidcPeer("http://jwt.invalid/fhir", BASE, workdir)
    yield jwt_peer, opaque_peer
    jwt_peer.stop()
    opaque_peer.stop()


@pytest.fixture
def web(peers, database, engine, monkeypatch):
    jwt_peer, opaque_peer = peers
    monkeypatch.setenv("OIDC_RS_SECRET", "rs-secret")
    config = load_config(env={}, read_files=False, overrides={"database_url": database[0], "auth": {
        "allow_loopback": True,
        "issuers": [{"issuer": jwt_peer.issuer, "jwks_url": f"{jwt_peer.issuer}/jwks",
                     "algorithms": ["ES256", "RS256"]},
                    {"issuer": opaque_peer.issuer, "introspection_url": f"{opaque_peer.issuer}/token/introspection",
                     "introspection_client_id": "fhirimg-rs", "introspection_secret_env": "OIDC_RS_SECRET"}]}})
    return create_app(config, engine=engine).test_client()


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_jwt_access_token_of_a_trusted_issuer_is_accepted_with_its_scopes(peers, web):
    token = peers[0].token("system/*.rs")
    assert web.get("/fhir/Patient", headers=bearer(token)).status_code == 200
    refused = web.post("/fhir/Patient", json=make_patient(), headers=bearer(token))
    assert refused.status_code == 403 and "create on Patient" in refused.json["issue"][0]["diagnostics"]


def test_a_jwt_for_another_resource_server_is_401(peers, web):
    token = peers[0].token("system/*.rs", resource="http://other.example/fhir")
    response = web.get("/fhir/Patient", headers=bearer(token))
    assert response.status_code == 401 and "aud" in response.json["issue"][0]["diagnostics"]


def test_an_opaque_token_is_introspected_and_its_scope_applies(peers, web):
    token = peers[1].token("system/ImagingStudy.rs")
    assert web.get("/fhir/ImagingStudy", headers=bearer(token)).status_code == 200
    assert web.get("/fhir/Patient", headers=bearer(token)).status_code == 403


def test_an_unknown_opaque_token_is_401(web):
    response = web.get("/fhir/Patient", headers=bearer("not-a-token-anyone-issued"))
    assert response.status_code == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
