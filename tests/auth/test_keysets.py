"""JWK Sets fetched from URLs (a client's jwks_url, an issuer's): the SSRF guard, Cache-Control,
and a new kid picked up after the cooldown - against a real HTTP server on loopback."""
from __future__ import annotations

import pytest

from fhirimg.auth.jwks import KeySetCache, KeySetError, max_age
from fhirimg.transfer.netpolicy import HostPolicy

from ..auth_support import ClientKey, token_form
from .stubs import JsonServer


class JwksServer(JsonServer):
    """A JWK Set at /jwks whose keys and Cache-Control the test changes."""

    def __init__(self):
        super().__init__()
        self.url += "/jwks"
        self.keys = []
        self.cache_control = "max-age=600"

    @property
    def keys(self) -> list[dict]:
        return self.body.get("keys", [])

    @keys.setter
    def keys(self, value: list[dict]) -> None:
        self.body = {"keys": value}

    @property
    def cache_control(self) -> str:
        return self.headers["Cache-Control"]

    @cache_control.setter
    def cache_control(self, value: str) -> None:
        self.headers["Cache-Control"] = value


@pytest.fixture
def jwks_server():
    server = JwksServer()
    yield server
    server.stop()


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_cache_control_max_age_is_honoured_and_capped():
    assert max_age("public, max-age=120") == 120
    assert max_age("no-store") == 0 and max_age("no-cache, max-age=5") == 0
    assert max_age(None) is None


def test_keys_are_cached_as_long_as_cache_control_says(jwks_server):
    key = ClientKey("ES256")
    jwks_server.keys = [key.public_jwk]
    clock = Clock()
    cache = KeySetCache(HostPolicy([], allow_loopback=True), 3600, 30, clock=clock)
    assert cache.key(jwks_server.url, key.kid) is not None
    clock.now += 500
    assert cache.key(jwks_server.url, key.kid) is not None and jwks_server.fetches == 1
    clock.now += 200  # past max-age=600
    cache.key(jwks_server.url, key.kid)
    assert jwks_server.fetches == 2


def test_an_unknown_kid_refetches_at_most_once_per_cooldown(jwks_server):
    old, new = ClientKey("ES256"), ClientKey("ES256")
    jwks_server.keys = [old.public_jwk]
    clock = Clock()
    cache = KeySetCache(HostPolicy([], allow_loopback=True), 3600, 30, clock=clock)
    assert cache.key(jwks_server.url, old.kid) is not None
    jwks_server.keys = [old.public_jwk, new.public_jwk]  # the client rotates its key
    assert cache.key(jwks_server.url, new.kid) is None  # within the cooldown: no fetch
    assert jwks_server.fetches == 1
    clock.now += 31
    assert cache.key(jwks_server.url, new.kid) is not None
    assert jwks_server.fetches == 2
    for _ in range(10):  # a flood of unknown kids costs one fetch per cooldown
        cache.key(jwks_server.url, "bogus")
    assert jwks_server.fetches == 2


def test_a_jwks_url_outside_the_allow_list_is_never_fetched(jwks_server):
    cache = KeySetCache(HostPolicy([], allow_loopback=False, list_name="auth.allowed_hosts"), 3600, 30)
    with pytest.raises(KeySetError, match="auth.allowed_hosts"):
        cache.key(jwks_server.url, "any")
    assert jwks_server.fetches == 0


def test_a_client_registered_by_jwks_url_gets_tokens(database, engine, jwks_server):
    from fhirimg.app import create_app
    from fhirimg.config import load_config
    config = load_config(env={}, read_files=False, overrides={"database_url": database[0],
                                                              "auth": {"allow_loopback": True}})
    web = create_app(config, engine=engine).test_client()
    key = ClientKey("RS384")
    jwks_server.keys = [key.public_jwk]
    from fhirimg.auth.clients import Client, add_client
    add_client(engine, Client("by-url", "by-url", "system/*.rs", jwks_url=jwks_server.url), "test")
    response = web.post("/auth/token", data=token_form(key, "by-url", "system/*.rs"))
    assert response.status_code == 200, response.json
    # jku naming another URL is refused, even with a valid signature
    refused = web.post("/auth/token", data=token_form(key, "by-url", "system/*.rs",
                                                      headers={"jku": "http://127.0.0.1:1/evil"}))
    assert refused.status_code == 401 and refused.json["error"] == "invalid_client"
