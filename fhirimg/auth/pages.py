"""The authorization endpoint's two HTML pages - the sign-in form and the error page - and
the headers that keep them to themselves: no script at all, styles only with this answer's
nonce, never in a frame (clickjacking), never cached, no Referer (the URL holds the state).
"""
from __future__ import annotations

import functools
import secrets
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader, select_autoescape

from .launch import AuthorizationRequest


@functools.cache
def environment() -> Environment:
    return Environment(loader=PackageLoader("fhirimg.auth", "templates"),
                       autoescape=select_autoescape(["html"]), auto_reload=False)


def security_headers(nonce: str, form_targets: tuple[str, ...] = ()) -> dict[str, str]:
    # form-action also governs where the form's answer may redirect (Chrome enforces it):
    # the app's registered redirect origin is allowed, nothing else.
    form_action = " ".join(("'self'",) + form_targets)
    return {
        "Content-Security-Policy": f"default-src 'none'; style-src 'nonce-{nonce}'; form-action {form_action}; "
                                   "frame-ancestors 'none'; base-uri 'none'",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
    }


def origin_of(uri: str) -> str | None:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def login_page(ask: AuthorizationRequest, action: str, csrf_token: str, error: str = "",
               username: str = "") -> tuple[str, dict[str, str]]:
    """(HTML, headers) of the sign-in form for an authorization request."""
    nonce = secrets.token_urlsafe(16)
    target = origin_of(ask.redirect_uri)
    html = environment().get_template("login.html").render(
        nonce=nonce, app_name=ask.client.name, app_origin=target, error=error, action=action,
        fields=ask.hidden_fields(), csrf_token=csrf_token, username=username or ask.login_hint,
        scopes=ask.scope.split())
    return html, security_headers(nonce, (target,) if target else ())


def error_page(message: str) -> tuple[str, dict[str, str]]:
    nonce = secrets.token_urlsafe(16)
    return environment().get_template("error.html").render(nonce=nonce, message=message), security_headers(nonce)
