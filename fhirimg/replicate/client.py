"""HTTP to the other side of a link: history pages in, transaction Bundles out.

Retries with exponential backoff and full jitter on connection errors and 5xx, honours
``Retry-After`` on 429/503 (bounded), never follows a link to another origin, caps the
size of what it reads, and takes credentials only from the environment variables the
link names. The clock and sleep are passed in so tests need no patching.
"""
from __future__ import annotations

import base64
import os
import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Callable
from urllib.parse import urlsplit

import orjson
import requests

from .settings import Link

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
FHIR_JSON = "application/fhir+json"
USER_AGENT = "fhirimg-replicate/1"
SITE_HEADER = "X-Fhirimg-Site"


class PeerError(Exception):
    """The other side failed; ``retryable`` says whether trying later may help."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = True):
        super().__init__(message)
        self.status = status
        self.retryable = retryable


@dataclass
class RetryPolicy:
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_response_bytes: int = 256 << 20

    @classmethod
    def from_section(cls, section: dict) -> "RetryPolicy":
        return cls(**{k: section[k] for k in cls.__dataclass_fields__})


class PeerClient:
    """One HTTP session to one peer's FHIR base."""

    def __init__(self, link: Link, policy: RetryPolicy, sleep: Callable[[float], None] = time.sleep,
                 session: requests.Session | None = None):
        self.link = link
        self.base = link.url.rstrip("/")
        self.policy = policy
        self.sleep = sleep
        self.session = session or requests.Session()
        self.session.headers.update({"Accept": FHIR_JSON, "User-Agent": USER_AGENT, **auth_headers(link)})
        self.backend = None
        if link.auth == "smart-backend":
            from ..auth.outbound import backend_client
            self.backend = backend_client(link, self.base)
        self.peer_site: str | None = None

    def close(self) -> None:
        self.session.close()

    def get_bundle(self, url: str) -> dict:
        self.check_same_origin(url)
        response = self.send("GET", url)
        return self.json_of(response, url)

    def post_bundle(self, bundle: dict) -> dict:
        response = self.send("POST", self.base, data=orjson.dumps(bundle), headers={"Content-Type": FHIR_JSON})
        return self.json_of(response, self.base)

    def send_entry(self, method: str, path: str, resource: dict | None) -> requests.Response:
        """One PUT or DELETE, for destinations without transactions and to isolate a bad entry."""
        data = orjson.dumps(resource) if resource is not None else None
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=minimal"} if data else {"Prefer": "return=minimal"}
        return self.send(method, f"{self.base}/{path}", data=data, headers=headers, accept_4xx=True)

    def send(self, method: str, url: str, data: bytes | None = None, headers: dict | None = None,
             accept_4xx: bool = False) -> requests.Response:
        """The response to a request, retried while the failure is transient."""
        last: PeerError | None = None
        renewed = False
        for attempt in range(self.policy.max_attempts):
            if attempt:
                self.sleep(last.delay if getattr(last, "delay", None) is not None else self.backoff(attempt))
            try:
                response = self.session.request(method, url, data=data, headers={**(headers or {}),
                                                                                **self.token_header()},
                                                timeout=(self.policy.connect_timeout, self.policy.read_timeout),
                                                allow_redirects=False, stream=True)
            except requests.RequestException as exc:
                last = PeerError(f"{method} {url}: {type(exc).__name__}: {exc}")
                continue
            if SITE_HEADER in response.headers:
                self.peer_site = response.headers[SITE_HEADER]
            if response.status_code == 401 and self.backend is not None and not renewed:
                # backend-services.html: a token may be revoked or rotated early; ask once more.
                renewed = True
                self.backend.invalidate()
                response.close()
                last = PeerError(f"{method} {url}: 401, token renewed", 401)
                last.delay = 0.0
                continue
            if response.status_code < 300 or (accept_4xx and response.status_code < 500
                                              and response.status_code != 429):
                return response
            last = status_error(method, url, response)
            response.close()
            if not last.retryable:
                raise last
            last.delay = retry_after(response.headers.get("Retry-After"), self.policy.retry_after_max)
        raise last

    def token_header(self) -> dict[str, str]:
        if self.backend is None:
            return {}
        from ..auth.outbound import TokenRequestError
        try:
            return self.backend.headers()
        except (TokenRequestError, requests.RequestException, OSError) as exc:
            raise PeerError(f"no token from {self.link.token_url or self.base}: {exc}") from None

    def backoff(self, attempt: int) -> float:
        ceiling = min(self.policy.backoff_max, self.policy.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(0, ceiling)

    def json_of(self, response: requests.Response, url: str):
        try:
            body = read_bounded(response, self.policy.max_response_bytes)
        finally:
            response.close()
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise PeerError(f"{url} answered with something that is not JSON: {exc}", response.status_code) from None

    def check_same_origin(self, url: str) -> None:
        """Links in a Bundle come from the peer: follow them only to the peer's own FHIR base."""
        if origin_of(url) != origin_of(self.base) or not is_below(urlsplit(url).path, urlsplit(self.base).path):
            raise PeerError(f"refusing to follow {url[:200]}: it is not below {self.base}", retryable=False)


def is_below(path: str, base_path: str) -> bool:
    """`path` is `base_path` or under it at a segment boundary (/fhirC-evil is not under /fhirC),
    and names no dot-segment (/fhirD/../x would leave it once a server normalises it)."""
    from urllib.parse import unquote
    base = base_path.rstrip("/")
    segments = unquote(path).split("/")
    if any(segment in (".", "..") for segment in segments):
        return False
    return path == base or path.startswith(base + "/")


def origin_of(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def status_error(method: str, url: str, response: requests.Response) -> PeerError:
    try:
        detail = response.raw.read(2000, decode_content=True).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status is what matters
        detail = ""
    return PeerError(f"{method} {url} answered {response.status_code}: {detail[:500]}", response.status_code,
                     retryable=response.status_code in RETRY_STATUSES)


def retry_after(value: str | None, ceiling: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), bounded."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), ceiling)
    try:
        return max(0.0, min(parsedate_to_datetime(value).timestamp() - time.time(), ceiling))
    except (TypeError, ValueError):
        return None


def read_bounded(response: requests.Response, limit: int) -> bytes:
    chunks, size = [], 0
    for chunk in response.iter_content(65536):
        size += len(chunk)
        if size > limit:
            raise PeerError(f"the response exceeds {limit} bytes", response.status_code, retryable=False)
        chunks.append(chunk)
    return b"".join(chunks)


def auth_headers(link: Link) -> dict[str, str]:
    if link.auth == "bearer":
        return {"Authorization": f"Bearer {_env(link.token_env)}"}
    if link.auth == "basic":
        pair = f"{_env(link.username_env)}:{_env(link.password_env)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {}


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise PeerError(f"environment variable {name} (named by the link's credentials) is not set",
                        retryable=False)
    return value
