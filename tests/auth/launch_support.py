"""A browser and a SMART app doing the standalone launch (app-launch.html), step by step,
with the PKCE values computed here as RFC 7636 §4 says, not by the server's code."""
from __future__ import annotations

import base64
import hashlib
import secrets
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

from argon2 import PasswordHasher

from fhirimg.auth.users import User, add_user

PASSWORD = "correct horse battery staple"
ROOT = "http://localhost"
BASE = ROOT + "/fhir"
CONSOLE = "fhirimg-console"
CONSOLE_REDIRECT = ROOT + "/console/callback"


# Argon2id at the lowest cost, for speed: the server's own parameters take about a second
# per hash on a slow test machine, and these tests sign in hundreds of times.
QUICK_HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def quick_hashing(monkeypatch) -> None:
    from fhirimg.auth import users
    monkeypatch.setattr(users, "hasher", lambda: QUICK_HASHER)


def make_user(engine, username: str = "alice", scopes: str = "user/*.rs", **extra) -> User:
    user = User(username, scopes, **extra)
    add_user(engine, user, PASSWORD, "tests")
    return user


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


class FormFields(HTMLParser):
    """The <input> name/value pairs of a page (the sign-in form's hidden fields)."""

    def __init__(self, html: str):
        super().__init__()
        self.fields: dict[str, str] = {}
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "input" and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""


class Launch:
    """One app's authorization request: its state, PKCE verifier and parameters."""

    def __init__(self, client_id: str = CONSOLE, redirect_uri: str = CONSOLE_REDIRECT,
                 scope: str = "openid fhirUser user/*.rs", aud: str = BASE, **extra):
        self.verifier = secrets.token_urlsafe(48)
        self.state = secrets.token_urlsafe(16)
        self.client_id, self.redirect_uri = client_id, redirect_uri
        self.params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
                       "scope": scope, "state": self.state, "aud": aud, "code_challenge": s256(self.verifier),
                       "code_challenge_method": "S256", **extra}
        self.params = {k: v for k, v in self.params.items() if v is not None}

    def authorize(self, web):
        """The browser follows the app to the authorization endpoint."""
        return web.get("/auth/authorize", query_string=self.params)

    def sign_in(self, web, username: str = "alice", password: str = PASSWORD, page=None, **override):
        """The user fills in the form it was shown (hidden fields and CSRF token as sent)."""
        page = page if page is not None else self.authorize(web)
        assert page.status_code == 200, page.get_data(as_text=True)
        fields = FormFields(page.get_data(as_text=True)).fields
        fields.update({"username": username, "password": password, **override})
        return web.post("/auth/authorize", data={k: v for k, v in fields.items() if v is not None})

    def code_from(self, response) -> str:
        assert response.status_code == 303, response.get_data(as_text=True)
        location = response.headers["Location"]
        assert location.startswith(self.redirect_uri + "?")
        query = parse_qs(urlsplit(location).query)
        assert query["state"] == [self.state]
        return query["code"][0]

    def exchange(self, web, code: str, **override):
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri,
                "code_verifier": self.verifier, "client_id": self.client_id, **override}
        return web.post("/auth/token", data={k: v for k, v in form.items() if v is not None})

    def token(self, web, username: str = "alice", password: str = PASSWORD) -> dict:
        """The whole launch: the token response."""
        response = self.exchange(web, self.code_from(self.sign_in(web, username, password)))
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.json


def error_of(response) -> dict[str, str]:
    """The error an authorization endpoint sent back to the app's redirect URI."""
    assert response.status_code == 303, response.get_data(as_text=True)
    return {k: v[0] for k, v in parse_qs(urlsplit(response.headers["Location"]).query).items()}
