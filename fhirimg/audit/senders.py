"""The two ways an AuditEvent batch reaches an external audit repository.

``FhirSender``: ATNA's FHIR feed (ITI-20) - POST a ``batch`` Bundle of AuditEvents to the
repository's base; acknowledged only by a 200 whose every entry answered 2xx. HTTP, retries
and credentials are replication's PeerClient (one attempt: the outbox retries later).

``SyslogSender``: RFC 5424 messages over TLS (RFC 5425, octet-counting framing). The
transport has no application-level acknowledgement, so "acknowledged" means every byte
was written to a TLS connection whose server certificate verified.

A ``ForwardError`` message is stored in the cursor row and shown by ``fhirimg audit status``:
it names the target and what failed, never a credential.
"""
from __future__ import annotations

import logging
import os
import socket
import ssl
from dataclasses import dataclass

import orjson
import requests

from ..config import Credentials
from ..replicate.client import FHIR_JSON, PeerClient, PeerError, RetryPolicy
from ..transfer.netpolicy import METADATA_HOSTS, HostRefused, split_origin
from .portable import outcome_of

log = logging.getLogger("fhirimg.audit")

USER_AGENT = "fhirimg-audit/1"
FACILITY = 10  # security/authorization messages: what ATNA (DICOM PS3.15 A.5) uses for audit records
NOTICE, WARNING = 5, 4  # severity: a successful act, a failed one
# MSGID: ATNA's "IHE+RFC-3881" (and DICOM's) announces the DICOM audit XML schema; these
# messages carry a FHIR R5 AuditEvent as JSON, so they say so and receivers can route on it.
MSGID = "FHIR+JSON"
BOM = b"\xef\xbb\xbf"  # RFC 5424 6.4: a UTF-8 MSG starts with the BOM
SAFE_LENGTH = 32768  # RFC 5425 4.3.1: receivers SHALL accept at least this many octets


class ForwardError(Exception):
    """The target did not acknowledge the batch; the message is safe to store and show."""


@dataclass(kw_only=True)
class Target(Credentials):
    """One validated [[audit.forward]] entry (settings.ForwardSchema)."""

    name: str
    kind: str
    url: str = ""
    host: str = ""
    port: int = 6514
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    batch_size: int = 100
    timeout: float = 10.0


def configured_targets(config: dict) -> list[Target]:
    return [Target(**entry) for entry in config["audit"]["forward"]]


def sender_for(target: Target, session: requests.Session | None = None):
    """The sender of a target's kind; ForwardError when it cannot even be set up."""
    return FhirSender(target, session) if target.kind == "fhir" else SyslogSender(target)


class FhirSender:
    def __init__(self, target: Target, session: requests.Session | None = None):
        check_forward_url(target.url)
        session = session or requests.Session()
        session.verify = target.ca_file or True
        if target.cert_file:
            session.cert = (target.cert_file, target.key_file) if target.key_file else target.cert_file
        policy = RetryPolicy(max_attempts=1, connect_timeout=target.timeout, read_timeout=target.timeout,
                             max_response_bytes=16 << 20)
        try:
            self.client = PeerClient(target, policy, session=session)  # reads credentials from the environment
        except PeerError as exc:
            raise ForwardError(f"{target.name}: {exc}") from None
        self.client.session.headers["User-Agent"] = USER_AGENT

    def send(self, resources: list[dict]) -> None:
        base = self.client.base
        try:
            response = self.client.send("POST", base, data=orjson.dumps(batch_bundle(resources)),
                                        headers={"Content-Type": FHIR_JSON})
            if response.status_code != 200:  # a batch is answered 200 (http.html#transaction-response)
                response.close()
                raise ForwardError(f"POST {base} answered {response.status_code}, not 200")
            body = self.client.json_of(response, base)
        except PeerError as exc:
            raise ForwardError(str(exc)) from None
        check_batch_response(body, len(resources), base)

    def close(self) -> None:
        self.client.close()


def check_forward_url(url: str) -> None:
    """Forward targets come from the operator's configuration: http(s), no credentials in the URL."""
    try:
        _, host, _ = split_origin(url)
    except HostRefused as exc:
        raise ForwardError(f"forward url {url[:200]}: {exc}") from None
    if host in METADATA_HOSTS:
        raise ForwardError(f"forward url {url[:200]}: host {host} is a cloud metadata service")


def batch_bundle(resources: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "batch",
            "entry": [{"resource": r, "request": {"method": "POST", "url": "AuditEvent"}} for r in resources]}


def check_batch_response(body, expected: int, base: str) -> None:
    """Every entry of the batch-response must be 2xx, and there must be one per event sent."""
    entries = body.get("entry") if isinstance(body, dict) else None
    if not isinstance(entries, list) or body.get("type") != "batch-response":
        raise ForwardError(f"POST {base} answered 200 without a batch-response Bundle")
    if len(entries) != expected:
        raise ForwardError(f"POST {base}: batch-response has {len(entries)} entries for {expected} events")
    for number, entry in enumerate(entries):
        status = str(((entry or {}).get("response") or {}).get("status", ""))
        if not status.startswith("2"):
            raise ForwardError(f"POST {base}: entry {number} answered {status[:60] or 'no status'}")


class SyslogSender:
    def __init__(self, target: Target, hostname: str | None = None):
        self.target = target
        self.hostname = header_field(hostname or socket.gethostname(), 255)
        self.procid = str(os.getpid())
        try:
            self.context = tls_context(target)
        except (OSError, ssl.SSLError) as exc:
            raise ForwardError(f"{target.name}: TLS set-up failed: {type(exc).__name__}: {exc}") from None

    def send(self, resources: list[dict]) -> None:
        t = self.target
        frames = b"".join(octet_counted(self.message(r)) for r in resources)
        try:
            with socket.create_connection((t.host, t.port), timeout=t.timeout) as raw, \
                    self.context.wrap_socket(raw, server_hostname=t.host) as tls:
                tls.sendall(frames)
        except (OSError, ssl.SSLError) as exc:  # includes certificate verification failures
            raise ForwardError(f"syslog {t.host}:{t.port}: {type(exc).__name__}: {exc}") from None

    def message(self, resource: dict) -> bytes:
        message = syslog_message(resource, self.hostname, self.procid)
        if len(message) > SAFE_LENGTH:
            log.warning("audit forward %s: a %d-octet syslog message exceeds the %d every receiver must accept",
                        self.target.name, len(message), SAFE_LENGTH)
        return message

    def close(self) -> None:
        pass


def tls_context(target: Target) -> ssl.SSLContext:
    """Verify the server against ca_file (else the system's store); present our certificate when given (mutual TLS)."""
    context = ssl.create_default_context(cafile=target.ca_file or None)
    if target.cert_file:
        context.load_cert_chain(target.cert_file, target.key_file or None)
    return context


def syslog_message(resource: dict, hostname: str, procid: str) -> bytes:
    """RFC 5424: <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD MSG, the event as MSG."""
    severity = NOTICE if outcome_of(resource) == "0" else WARNING
    timestamp = header_field(str(resource.get("recorded") or "-"), 64)
    header = f"<{FACILITY * 8 + severity}>1 {timestamp} {hostname} fhirimg {procid} {MSGID} -"
    return header.encode("ascii") + b" " + BOM + orjson.dumps(resource)


def header_field(value: str, limit: int) -> str:
    """A header field is printable US-ASCII without spaces (RFC 5424 6.2), or NILVALUE."""
    cleaned = "".join(c for c in value if 33 <= ord(c) <= 126)[:limit]
    return cleaned or "-"


def octet_counted(message: bytes) -> bytes:
    """RFC 5425 4.3: MSG-LEN SP SYSLOG-MSG."""
    return str(len(message)).encode("ascii") + b" " + message
