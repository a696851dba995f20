"""Public keys fetched from a JWKS URL: a client's registered set or an issuer's.

Fetched only through the transfers' SSRF-guarded session (the URL's host must be on
``auth.allowed_hosts``), never following redirects, bounded in size; cached as long as
the answer's ``Cache-Control: max-age`` says (at most ``auth.jwks_max_age``), and fetched
again when a token names an unknown ``kid``, at most once per cooldown.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass

import requests
from jwt import PyJWK
from jwt.exceptions import PyJWKError

from ..transfer.client import make_session
from ..transfer.netpolicy import HostPolicy, HostRefused

MAX_JWKS_BYTES = 256 * 1024
FETCH_TIMEOUT = (3.0, 5.0)


class KeySetError(Exception):
    """The key set could not be had; the message says why (never a secret)."""


@dataclass
class _Entry:
    keys: dict[str, PyJWK]
    expires: float
    tried: float  # the last fetch attempt, for the unknown-kid cooldown


def keys_of(document: dict) -> dict[str, PyJWK]:
    """kid -> key of a JWK Set; keys without a kid, or unusable, are skipped."""
    out = {}
    for raw in (document.get("keys") or []) if isinstance(document, dict) else []:
        if not isinstance(raw, dict) or not raw.get("kid") or raw.get("use", "sig") != "sig":
            continue
        try:
            out[str(raw["kid"])] = PyJWK(raw)
        except PyJWKError:
            continue
    return out


def max_age(cache_control: str | None) -> float | None:
    if not cache_control:
        return None
    if re.search(r"\b(no-store|no-cache)\b", cache_control):
        return 0.0
    found = re.search(r"\bmax-age=(\d+)", cache_control)
    return float(found.group(1)) if found else None


class KeySetCache:
    """JWK Sets by URL, shared by the threads of one process."""

    def __init__(self, policy: HostPolicy, max_age_seconds: float, cooldown: float, clock=time.monotonic,
                 session: requests.Session | None = None):
        self.policy = policy
        self.max_age = max_age_seconds
        self.cooldown = cooldown
        self.clock = clock
        self.session = session or make_session(policy)
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def key(self, url: str, kid: str) -> PyJWK | None:
        """The key `kid` of the set at `url`; an unknown kid refetches once per cooldown."""
        entry = self._entries.get(url)
        if entry is None or self.clock() >= entry.expires:
            entry = self._fetch(url, entry)
        elif kid not in entry.keys and self.clock() - entry.tried >= self.cooldown:
            entry = self._fetch(url, entry)
        return entry.keys.get(kid)

    def _fetch(self, url: str, old: _Entry | None) -> _Entry:
        now = self.clock()
        try:
            self.policy.check_url(url)
            response = self.session.get(url, timeout=FETCH_TIMEOUT, allow_redirects=False, stream=True,
                                        headers={"Accept": "application/jwk-set+json, application/json"})
            body = response.raw.read(MAX_JWKS_BYTES + 1, decode_content=True)
            response.close()
        except (HostRefused, requests.RequestException, OSError) as exc:
            if old is not None:  # keep serving the keys we had; try again after the cooldown
                old.tried = now
                return old
            raise KeySetError(f"JWKS {url} could not be fetched: {exc}") from None
        if response.status_code != 200 or len(body) > MAX_JWKS_BYTES:
            if old is not None:
                old.tried = now
                return old
            raise KeySetError(f"JWKS {url} answered {response.status_code}"
                              + (" with more than 256 KiB" if len(body) > MAX_JWKS_BYTES else ""))
        try:
            import orjson
            keys = keys_of(orjson.loads(body))
        except ValueError:
            raise KeySetError(f"JWKS {url} is not JSON") from None
        lifetime = max_age(response.headers.get("Cache-Control"))
        lifetime = self.max_age if lifetime is None else min(lifetime, self.max_age)
        entry = _Entry(keys, now + lifetime, now)
        with self._lock:
            self._entries[url] = entry
        return entry
