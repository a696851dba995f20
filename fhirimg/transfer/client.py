"""The HTTP session policy of the transfer workers.

One place decides how fhirimg talks to a DICOMweb source: only allow-listed hosts
(checked again on the connected socket), no redirects to another origin, connect and
per-read idle timeouts instead of one whole-request timeout (large series take as long
as they take, a stalled one fails fast), retries with exponential backoff and full
jitter on connection errors and 5xx, ``Retry-After`` honoured on 429/503, per-Endpoint
limits on concurrent requests and on request rate, ``Accept-Encoding: identity``
(Orthanc gzips DICOM otherwise, 13-16x slower), credentials only from the environment
variables the configuration names.
"""
from __future__ import annotations

import base64
import os
import random
import socket
import struct
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Callable, Iterable, Iterator
from urllib.parse import quote, urljoin

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from ..config import Credentials
from .netpolicy import HostPolicy, HostRefused, split_origin

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# What reading a body can raise when the source breaks it off or stalls past the idle timeout.
BODY_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)
Watch = Callable[[Iterable[bytes]], Iterable[bytes]]
MAX_REDIRECTS = 3
USER_AGENT = "fhirimg-transfer/1"


class SourceError(Exception):
    """The source could not give what was asked; ``status`` is the HTTP status if one came.

    ``category`` (refused, timeout, protocol error) is what a client reads in Task.statusReason
    for a network failure; the message, with addresses and errno, is for the log: an Endpoint
    any client may write would otherwise make $retrieve a port scanner of the worker's network."""

    def __init__(self, message: str, status: int | None = None, retryable: bool = False,
                 category: str | None = None):
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.category = category

    def public(self) -> str:
        if self.category is not None:
            return f"the source could not be reached ({self.category})"
        return str(self)


def network_category(exc: Exception) -> str:
    if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)):
        return "timeout"
    cause, seen = exc, 0
    while cause is not None and seen < 10:
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(cause):
            return "refused"
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    return "protocol error"


@dataclass
class EndpointLimits(Credentials):
    """Per-source settings matched by the longest ``address_prefix`` of a URL."""

    address_prefix: str
    max_concurrency: int = 4
    max_requests_per_second: float = 0.0  # 0 = unlimited


@dataclass
class ClientSettings:
    allowed_hosts: list[str] = field(default_factory=list)
    allow_loopback: bool = False
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_retries: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    default_concurrency: int = 4
    endpoints: list[EndpointLimits] = field(default_factory=list)


class TransferClient:
    """GET requests to DICOMweb sources under the policy above; thread-safe."""

    def __init__(self, settings: ClientSettings, policy: HostPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 monotonic: Callable[[], float] = time.monotonic,
                 rng: Callable[[], float] = random.random,
                 environ: dict | None = None):
        self.settings = settings
        self.policy = policy or HostPolicy(settings.allowed_hosts, settings.allow_loopback)
        self.sleep, self.monotonic, self.rng = sleep, monotonic, rng
        self.environ = os.environ if environ is None else environ
        self.session = make_session(self.policy)
        self._gates: dict[str, EndpointGate] = {}
        self._lock = threading.Lock()
        self.retries = 0  # observed retries, reported in Task.output
        self._round_trips: dict[str, float] = {}  # origin -> shortest handshake seen (warm)

    def close(self) -> None:
        self.session.close()

    @contextmanager
    def stream(self, url: str, accept: str) -> Iterator[requests.Response]:
        """An open streaming response with a 2xx status; the endpoint slot is held until exit."""
        self.policy.check_url(url)
        limits = self.limits_for(url)
        gate = self.gate_for(url, limits)
        headers = {"Accept": accept, "Accept-Encoding": "identity", "User-Agent": USER_AGENT,
                   **self.auth_headers(limits)}
        renewed = False
        for attempt in range(self.settings.max_retries + 1):
            with gate.slot(self.sleep, self.monotonic):
                delay = None
                try:
                    response = self.send_following_redirects(url, headers)
                except (requests.ConnectionError, requests.Timeout) as exc:
                    delay = self.backoff(attempt)
                    failure = SourceError(f"connection to {url} failed: {exc}", retryable=True,
                                          category=network_category(exc))
                else:
                    if response.status_code < 300:
                        try:
                            yield response
                        finally:
                            response.close()
                        return
                    failure = status_error(url, response)
                    if response.status_code in RETRY_STATUSES:
                        delay = self.retry_delay(response, attempt)
                    elif response.status_code == 401 and limits.auth == "smart-backend" and not renewed:
                        renewed, delay = True, 0.0  # the token may have been revoked: renew it once
                        self.backend_for(limits).invalidate()
                        headers.update(self.auth_headers(limits))
                    response.close()
            if delay is None or attempt == self.settings.max_retries:
                raise failure
            with self._lock:
                self.retries += 1
            self.sleep(delay)

    def warm(self, url: str, count: int) -> int:
        """Open up to ``count`` idle connections to ``url``'s origin, all at once, and leave
        them in the pool; returns how many opened.

        Over a WAN each new connection costs a round trip (two with TLS) before its first
        request: warmed while the first QIDO is under way, the series requests that follow
        it start on open connections. A connection that fails is simply not kept (the
        request that needs it opens its own and reports the failure)."""
        self.policy.check_url(url)
        adapter = self.session.get_adapter(url)
        pool = adapter.get_connection_with_tls_context(requests.Request("GET", url).prepare(),
                                                       verify=self.session.verify)
        # Taken from the pool (an idle one, else a new unconnected one) and all given back at
        # the end, so that the pool keeps every one of them.
        slots = [pool._get_conn() for _ in range(count)]
        fresh = [i for i, conn in enumerate(slots) if getattr(conn, "sock", None) is None]
        opened = []

        def open_one(index: int) -> None:
            try:
                slots[index].connect()
                opened.append(index)
            except Exception:  # noqa: BLE001 - not kept; the request that needs it reports it
                slots[index].close()

        threads = [threading.Thread(target=open_one, args=(i,), daemon=True) for i in fresh]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.note_round_trips(url, [getattr(conn, "sock", None) for conn in slots])
        for conn in slots:
            pool._put_conn(conn)
        return len(opened)

    def note_round_trips(self, url: str, socks: list) -> None:
        rtts = [rtt for rtt in map(socket_rtt, socks) if rtt is not None]
        if rtts:
            origin = split_origin(url)
            with self._lock:
                self._round_trips[origin] = min(rtts + [self._round_trips.get(origin, rtts[0])])

    def round_trip(self, url: str) -> float | None:
        """The round-trip time to ``url``'s origin in seconds, as the kernel measured it on the
        connections ``warm`` opened or found (None before, or where TCP_INFO is not offered)."""
        with self._lock:
            return self._round_trips.get(split_origin(url))

    def get_json(self, url: str, accept: str = "application/dicom+json", max_bytes: int = 256 << 20,
                 watch: Watch | None = None):
        """GET a JSON answer (QIDO, metadata) with a size bound; an empty body is ``[]``."""
        return self.get_json_sized(url, accept, max_bytes, watch)[0]

    def get_json_sized(self, url: str, accept: str = "application/dicom+json", max_bytes: int = 256 << 20,
                       watch: Watch | None = None):
        """``get_json`` and the size of the body it parsed (QIDO paging keeps a byte budget).

        The body is read as it arrives, each arrival passed through ``watch`` (the Task's
        cancel, deadline and throughput checks), and abandoned as soon as it passes
        ``max_bytes``: a source cannot make the worker hold more than that.
        """
        import orjson

        with self.stream(url, accept) as response:
            body = read_bounded(response, max_bytes, watch)
        if response.status_code == 204 or not body.strip():
            return [], len(body)
        try:
            return orjson.loads(body), len(body)
        except orjson.JSONDecodeError as exc:
            raise SourceError(f"{url} did not return JSON: {exc}") from None

    def send_following_redirects(self, url: str, headers: dict) -> requests.Response:
        """Follow a redirect only within the same origin (scheme, host, port)."""
        origin = split_origin(url)
        timeout = (self.settings.connect_timeout, self.settings.read_timeout)
        for _ in range(MAX_REDIRECTS + 1):
            response = self.session.get(url, headers=headers, stream=True, timeout=timeout,
                                        allow_redirects=False)
            if response.status_code not in (301, 302, 303, 307, 308):
                return response
            target = urljoin(url, response.headers.get("Location", ""))
            response.close()
            if split_origin(target) != origin:
                raise SourceError(f"{url} redirects to another origin; not followed", response.status_code)
            url = target
        raise SourceError(f"{url}: too many redirects", 310)

    def backoff(self, attempt: int) -> float:
        """Exponential backoff with full jitter (AWS architecture blog, 2015)."""
        cap = min(self.settings.backoff_max, self.settings.backoff_base * (2 ** attempt))
        return cap * self.rng()

    def retry_delay(self, response: requests.Response, attempt: int) -> float:
        after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        if after is None:
            return self.backoff(attempt)
        return min(after, self.settings.retry_after_max)

    def limits_for(self, url: str) -> EndpointLimits:
        matches = [e for e in self.settings.endpoints if url.startswith(e.address_prefix)]
        if matches:
            return max(matches, key=lambda e: len(e.address_prefix))
        return EndpointLimits(address_prefix="", max_concurrency=self.settings.default_concurrency)

    @contextmanager
    def waiting_slot(self, url: str) -> Iterator[bool]:
        """See EndpointGate.waiting_slot: False means take the path that does not wait."""
        with self.gate_for(url, self.limits_for(url)).waiting_slot() as granted:
            yield granted

    def gate_for(self, url: str, limits: EndpointLimits) -> "EndpointGate":
        key = limits.address_prefix or "%s://%s:%d" % split_origin(url)
        with self._lock:
            if key not in self._gates:
                self._gates[key] = EndpointGate(limits.max_concurrency, limits.max_requests_per_second)
            return self._gates[key]

    def auth_headers(self, limits: EndpointLimits) -> dict[str, str]:
        """Credentials by reference: the config names environment variables, never values."""
        if limits.auth == "basic":
            user = self.environ.get(limits.username_env, "")
            password = self.environ.get(limits.password_env, "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}
        if limits.auth == "bearer":
            return {"Authorization": f"Bearer {self.environ.get(limits.token_env, '')}"}
        if limits.auth == "smart-backend":
            from ..auth.outbound import TokenRequestError
            try:
                return self.backend_for(limits).headers()
            except (TokenRequestError, requests.RequestException, OSError) as exc:
                raise SourceError(f"no token for {limits.address_prefix}: {exc}") from None
        return {}

    def backend_for(self, limits: EndpointLimits):
        """The SMART Backend Services client of a source (its token_url is required: a
        DICOMweb base has no .well-known/smart-configuration of its own)."""
        from ..auth.outbound import backend_client
        return backend_client(limits, limits.address_prefix)


class EndpointGate:
    """At most ``concurrency`` requests in flight and ``rate`` request starts per second."""

    def __init__(self, concurrency: int, rate: float):
        self.concurrency = max(1, concurrency)
        self.semaphore = threading.BoundedSemaphore(self.concurrency)
        self.rate = rate
        self.lock = threading.Lock()
        self.next_start = 0.0
        self.waiting_holders = 0  # requests that may hold their slot while they wait for another

    @contextmanager
    def waiting_slot(self) -> Iterator[bool]:
        """Whether a request may hold a slot while it waits for another request of this
        endpoint (a series streaming before its listing is in): at most ``concurrency - 1``
        at once, so that the requests they wait for always find a slot."""
        with self.lock:
            granted = self.waiting_holders < self.concurrency - 1
            self.waiting_holders += granted
        try:
            yield granted
        finally:
            if granted:
                with self.lock:
                    self.waiting_holders -= 1

    @contextmanager
    def slot(self, sleep, monotonic) -> Iterator[None]:
        with self.semaphore:
            if self.rate > 0:
                sleep(self.reserve_start(monotonic()))
            yield

    def reserve_start(self, now: float) -> float:
        """Reserve the next start time spaced by 1/rate; return how long to wait for it."""
        with self.lock:
            start = max(now, self.next_start)
            self.next_start = start + 1.0 / self.rate
            return start - now


def status_error(url: str, response: requests.Response) -> SourceError:
    status = response.status_code
    return SourceError(f"{url} answered HTTP {status}", status, retryable=status in RETRY_STATUSES)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Retry-After is delay-seconds or an HTTP-date (RFC 9110 §10.2.3); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def read_bounded(response: requests.Response, max_bytes: int, watch: Watch | None = None) -> bytearray:
    """The body, read as it arrives; more than ``max_bytes`` is refused before it is all read.

    A body that breaks off or stalls past the idle timeout is a SourceError with a category
    (it used to escape as a bare requests error and leave the Task in progress).
    """
    body = bytearray()
    chunks = arrived_chunks(response.raw, 1 << 16, decode_content=True)
    try:
        for chunk in (watch(chunks) if watch is not None else chunks):
            if len(body) + len(chunk) > max_bytes:
                raise SourceError(f"answer larger than the limit of {max_bytes} bytes")
            body += chunk
    except BODY_ERRORS as exc:
        raise SourceError(f"the answer of {response.url} broke off: {exc}", retryable=True,
                          category=network_category(exc)) from None
    return body  # orjson parses a bytearray as it is: no copy


def arrived_chunks(raw, size: int, decode_content: bool = False) -> Iterator[bytes]:
    """The body as it arrives: each chunk is what the socket had, up to ``size`` bytes.

    ``raw.stream(size)`` waits until ``size`` bytes have come; on a slow link that holds
    back what was received (time to first instance, a cancel or a deadline noticed late),
    and a source dripping a byte at a time keeps such a read going for ever.
    """
    while True:
        chunk = raw.read1(size, decode_content=decode_content)
        if not chunk:
            return
        yield chunk


# QIDO values must reach the source unencoded where DICOM syntax needs it: Orthanc fails
# to match %5E (^), %2A (*) and %2D (-), which requests would produce.
_QUERY_SAFE = "^*-._,:~"


def build_url(base: str, segments: list[str], query: list[tuple[str, str]] | None = None) -> str:
    """``base/seg1/seg2?k=v`` with path segments and query values encoded by hand."""
    url = base.rstrip("/") + "".join("/" + quote(s, safe="") for s in segments)
    if query:
        url += "?" + "&".join(f"{quote(k, safe=_QUERY_SAFE)}={quote(str(v), safe=_QUERY_SAFE)}"
                              for k, v in query)
    return url


TCP_INFO_RTT = struct.Struct("=I")
TCP_INFO_RTT_OFFSET = 68  # struct tcp_info: 8 bytes of u8 fields, then u32s; tcpi_rtt is the 16th


def socket_rtt(sock) -> float | None:
    """The kernel's smoothed round-trip time of a connected TCP socket (Linux TCP_INFO,
    microseconds), in seconds; None where it cannot be read."""
    option = getattr(socket, "TCP_INFO", None)
    if sock is None or option is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, option, 104)
    except (OSError, ValueError):
        return None
    if len(info) < TCP_INFO_RTT_OFFSET + TCP_INFO_RTT.size:
        return None
    micros = TCP_INFO_RTT.unpack_from(info, TCP_INFO_RTT_OFFSET)[0]
    return micros / 1e6 if micros else None


def make_session(policy: HostPolicy) -> requests.Session:
    """A session that ignores proxy/netrc environment and checks every connected peer."""
    session = requests.Session()
    session.trust_env = False
    adapter = GuardedAdapter(policy, pool_connections=8, pool_maxsize=32)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class GuardedAdapter(HTTPAdapter):
    """Checks the peer address of every new connection against the host policy."""

    def __init__(self, policy: HostPolicy, **kwargs):
        self.policy = policy
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        guard = self.policy.check_connected
        http_conn = type("GuardedHTTPConnection", (_GuardMixin, HTTPConnection), {"guard": staticmethod(guard)})
        https_conn = type("GuardedHTTPSConnection", (_GuardMixin, HTTPSConnection), {"guard": staticmethod(guard)})
        self.poolmanager.pool_classes_by_scheme = {
            "http": type("GuardedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_conn}),
            "https": type("GuardedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_conn}),
        }


class _GuardMixin:
    guard: Callable[[str, str, int], None]

    def _new_conn(self):
        sock = super()._new_conn()
        try:
            self.guard(sock.getpeername()[0], (self.host or "").lower().strip("[]"), self.port)
        except HostRefused:
            sock.close()
            raise
        return sock


__all__ = ["TransferClient", "ClientSettings", "EndpointLimits", "SourceError", "HostRefused",
           "build_url", "parse_retry_after"]
