"""Who may read /healthz, /readyz and /metrics, and what the audit trail keeps of it."""
from __future__ import annotations

import pytest

from fhirimg.config import ConfigError, load_config

from ..audit.trail import all_events, code_of, events_of, outcome_of
from ..auth_support import authorized
from .conftest import TOKEN, TOKEN_VARIABLE

LISTEN_PORT = 9464
ON_LISTENER = {"SERVER_PORT": str(LISTEN_PORT)}  # what gunicorn sets for the metrics socket


@pytest.fixture
def with_token(monkeypatch):
    monkeypatch.setenv(TOKEN_VARIABLE, TOKEN)
    return {"token_env": TOKEN_VARIABLE}


def test_healthz_answers_anyone(make_app):
    response = make_app().test_client().get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "alive"}


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
def test_without_a_token_metrics_and_readyz_are_401_on_the_api_port(make_app, with_token, path):
    response = make_app(with_token).test_client().get(path)
    assert response.status_code == 401
    assert response.json["resourceType"] == "OperationOutcome"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("path", ["/metrics", "/readyz"])
def test_the_static_token_opens_metrics_and_readyz(make_app, with_token, path):
    response = make_app(with_token).test_client().get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200


def test_a_wrong_token_is_401(make_app, with_token):
    response = make_app(with_token).test_client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"})
    assert response.status_code == 401 and 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_a_smart_token_does_not_open_metrics(make_app, with_token):
    # Scrapers use the static token or the listener; a FHIR client's token is for FHIR.
    assert authorized(make_app(with_token)).get("/metrics").status_code == 401


def test_without_a_configured_token_metrics_are_refused_on_the_api_port(make_app):
    client = authorized(make_app())
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_with_auth_mode_none_everything_is_open_as_the_operator_chose(make_app):
    client = make_app(anonymous=True).test_client()
    assert client.get("/metrics").status_code == 200 and client.get("/readyz").status_code == 200


def test_the_listener_serves_metrics_and_readyz_without_a_token(make_app):
    client = make_app({"listen": f"127.0.0.1:{LISTEN_PORT}"}).test_client()
    assert client.get("/metrics", environ_overrides=ON_LISTENER).status_code == 200
    assert client.get("/readyz", environ_overrides=ON_LISTENER).status_code == 200
    assert client.get("/metrics").status_code == 401  # the API's port still asks for the token


def test_the_listener_serves_nothing_else(make_app):
    client = make_app({"listen": f"127.0.0.1:{LISTEN_PORT}"}, anonymous=True).test_client()
    for path in ("/fhir/metadata", "/fhir/Patient", "/auth/jwks", "/console"):
        assert client.get(path, environ_overrides=ON_LISTENER).status_code == 404, path


def test_a_refused_scrape_is_audited_as_a_failure(make_app, with_token, engine):
    client = make_app(with_token).test_client()
    assert client.get("/metrics", headers={"X-Request-Id": "scrape-401"}).status_code == 401
    (event,) = events_of(engine, "scrape-401")
    assert outcome_of(event) == "4" and code_of(event) == "operation"
    assert event["agent"][0]["who"]["identifier"]["value"] == "unauthenticated"


def test_scrapes_and_probes_are_not_audited(make_app, with_token, engine):
    client = make_app(with_token).test_client()
    before = len(all_events(engine))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for _ in range(3):
        assert client.get("/metrics", headers=bearer).status_code == 200
        assert client.get("/readyz", headers=bearer).status_code == 200
        assert client.get("/healthz").status_code == 200
    assert len(all_events(engine)) == before


def test_a_token_variable_named_fhirimg_is_refused_at_start():
    with pytest.raises(ConfigError, match="metrics.token_env"):
        load_config(env={}, read_files=False, overrides={"metrics": {"token_env": "FHIRIMG_METRICS_TOKEN"}})


def test_a_listen_address_without_a_port_is_refused_at_start():
    with pytest.raises(ConfigError, match="metrics.listen"):
        load_config(env={}, read_files=False, overrides={"metrics": {"listen": "127.0.0.1"}})
