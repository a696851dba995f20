"""A gunicorn worker whose event loop reads each whole request before a thread sees it.

gunicorn's gthread worker gives a connection to a thread as soon as it is accepted, and the
thread then blocks reading the request: 16 clients sending their headers a byte at a time
held every thread of `make run`, 200 stopped a 4-worker deployment (issue 15). Here the
worker's own event loop reads the head (at most 64 KiB) and the body (spooled to an
unlinked temporary file past 256 KiB) without blocking, the way waitress and nginx do,
and a thread gets the connection only when the request is complete: no client can make a
thread wait for it. What is still bounded here:

- the head must be complete `header_timeout` seconds after its first byte arrived;
- the body must arrive at `body_min_rate` bytes per second on average, after a grace of
  `header_timeout` seconds;
- one client address (an IPv6 /64) has at most `max_pending_per_client` unfinished
  requests per worker process; more are answered 429;
- a connection closed after its answer lingers in the event loop, not in a blocking read.

Those answered before the application are OperationOutcomes like every other error. TLS
stays with a reverse proxy (see README); with gunicorn's own TLS this worker behaves as
gthread does.
"""
from __future__ import annotations

import errno
import ipaddress
import select
import selectors
import socket
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial

from gunicorn.workers.gthread import TConn, ThreadWorker

from .framing import MAX_HEAD_BYTES, ChunkedEnd, Refusal, find_head_end, parse_head

SPOOL_IN_MEMORY = 256 * 1024
RECV_BYTES = 64 * 1024
LINGER_SECONDS = 2.0
SCAN_EVERY = 0.25  # seconds between deadline scans; a scan walks every unfinished request


@dataclass(frozen=True)
class IntakeSettings:
    header_timeout: float = 10.0
    body_min_rate: int = 4096
    max_pending_per_client: int = 64
    max_body: int = 64 * 1024 * 1024
    # POSTs under these paths (STOW-RS) may send up to max_upload bytes: their bodies are
    # spooled to disk here and read as a stream by the view, never held in memory.
    upload_paths: tuple[str, ...] = ()
    max_upload: int = 0

    def max_body_for(self, request_line: bytes) -> int:
        method, _, rest = request_line.partition(b" ")
        target = rest.split(b" ", 1)[0].decode("latin-1")
        if method == b"POST" and any(target.startswith(p) for p in self.upload_paths):
            return max(self.max_body, self.max_upload)
        return self.max_body


SETTINGS = IntakeSettings()  # set by serve.py in the master, inherited by the forked workers


def configure(settings: IntakeSettings) -> None:
    global SETTINGS
    SETTINGS = settings


class BufferedSocket:
    """The accepted socket as gunicorn's parser sees it: recv() returns the request the
    event loop read, and only then the socket itself, waiting for it at most `read_timeout`
    (reached only if gunicorn frames a request otherwise than the intake did)."""

    def __init__(self, sock: socket.socket, read_timeout: float):
        self.raw = sock
        self.read_timeout = read_timeout
        self.head = memoryview(b"")
        self.body = None
        self.local = False
        self.surplus = b""  # bytes past the request handed over: the next request's start

    def hand(self, head: bytes, body, local: bool = True) -> None:
        self.head = memoryview(head)
        self.body = body
        self.local = local  # the whole request is in head + body (not a head gunicorn refuses)

    def recv(self, size: int, flags: int = 0) -> bytes:
        if self.head:
            chunk, self.head = bytes(self.head[:size]), self.head[size:]
            return chunk
        if self.body is not None:
            chunk = self.body.read(size)
            if chunk:
                return chunk
            self.drop_body()
        return self.recv_raw(size)

    def recv_raw(self, size: int) -> bytes:
        poller = select.poll()
        poller.register(self.raw, select.POLLIN)
        if not poller.poll(self.read_timeout * 1000):
            raise socket.timeout("the client sent nothing more")
        return self.raw.recv(size)

    def drop_body(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self.drop_body()
        self.raw.close()

    def __getattr__(self, name):
        return getattr(self.raw, name)


class IntakeConn(TConn):
    """A connection whose graceful close is finished by the event loop (gunicorn's lingers
    in a blocking read of up to 2 s, in the event loop's own thread)."""

    worker = None

    def close(self, graceful: bool = False) -> None:
        if graceful and self.worker is not None and self.worker.alive:
            self.sock.drop_body()
            self.worker.linger(self.sock.raw)
        else:
            super().close(graceful)


class Intake:
    """One request being read: its head, then its body, with the time each began."""

    def __init__(self, conn: IntakeConn, client: str, settings: IntakeSettings):
        self.conn = conn
        self.client = client
        self.settings = settings
        self.started = time.monotonic()
        self.buffer = bytearray()
        self.head = None
        self.head_done = 0.0
        self.body = None
        self.received = 0
        self.chunks = None

    def feed(self, data: bytes):
        """Take bytes; (head, body file, surplus bytes) once the request is whole, else None."""
        if self.head is None:
            searched = len(self.buffer)
            self.buffer += data
            end = find_head_end(self.buffer, searched)
            if end < 0:
                if len(self.buffer) > MAX_HEAD_BYTES:
                    raise Refusal(431, "Request Header Fields Too Large",
                                  f"the request line and headers are over {MAX_HEAD_BYTES} bytes")
                return None
            data = bytes(self.buffer[end:])
            self.start_body(bytes(self.buffer[:end]))
            self.buffer = bytearray()
        return self.take_body(data)

    def start_body(self, raw: bytes) -> None:
        max_body = self.settings.max_body_for(raw.split(b"\r\n", 1)[0])
        self.head = parse_head(raw, max_body)
        self.head_done = time.monotonic()
        if self.head.body in ("length", "chunked"):
            self.body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
        if self.head.body == "chunked":
            self.chunks = ChunkedEnd(max_body)

    def take_body(self, data: bytes):
        kind = self.head.body
        if kind in ("none", "gunicorn"):
            return self.whole(data)
        if kind == "length":
            end = min(len(data), self.head.length - self.received)
        else:
            found = self.chunks.feed(data)
            end = len(data) if found is None else found
        self.body.write(data[:end])
        self.received += end
        done = self.received == self.head.length if kind == "length" else found is not None
        return self.whole(data[end:]) if done else None

    def whole(self, surplus: bytes):
        if self.body is not None:
            self.body.seek(0)
        return self.head.raw, self.body, surplus

    def overdue(self, now: float) -> bool:
        if self.head is None:
            return now - self.started > self.settings.header_timeout
        late = now - self.head_done - self.settings.header_timeout
        return late > 0 and self.received < late * self.settings.body_min_rate

    def discard(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None


def client_key(address) -> str:
    """The address a per-client cap counts: the IP, or its /64 for IPv6 (one host usually
    holds a whole /64)."""
    host = address[0] if isinstance(address, tuple) and address else ""
    if ":" in host:
        try:
            return str(ipaddress.ip_network(f"{host.split('%')[0]}/64", strict=False))
        except ValueError:
            return host
    return host


def send_quietly(sock: socket.socket, payload: bytes) -> None:
    """Best effort: an error answer to a client that may not be reading."""
    try:
        sock.send(payload, socket.MSG_DONTWAIT)
    except OSError:
        pass


class IntakeWorker(ThreadWorker):
    """gthread with the request intake in its event loop (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.settings = SETTINGS
        self.intakes: dict[int, Intake] = {}
        self.pending_by_client: Counter = Counter()
        self.lingering: dict[int, tuple[socket.socket, float]] = {}
        self.last_scan = 0.0
        self.buffering = not self.cfg.is_ssl

    # -- connections in -----------------------------------------------------------------

    def accept(self, listener):
        if not self.buffering:
            return super().accept(listener)
        try:
            sock, address = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        client = client_key(address)
        if self.pending_by_client[client] >= self.settings.max_pending_per_client:
            self.log.debug("refused %s: %d unfinished requests", client, self.pending_by_client[client])
            sock.setblocking(False)
            send_quietly(sock, self.error_answer(Refusal(
                429, "Too Many Requests",
                f"this address has {self.settings.max_pending_per_client} requests still being sent"),
                "Retry-After: 1\r\n"))
            self.linger(sock)
            return
        self.nr_conns += 1
        conn = IntakeConn(self.cfg, BufferedSocket(sock, self.settings.header_timeout), address,
                          listener.getsockname())
        conn.worker = self
        self.start_intake(conn)

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request is read like the first."""
        if not self.buffering:
            return super().on_client_socket_readable(conn, client)
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.start_intake(conn)

    def _keepalive_after(self, conn, keepalive):
        """Keep a connection whose answer came before its body was read (a 405, a 415, a
        401): gunicorn drains at most 64 KiB of an unread body and otherwise closes the
        connection, after the answer already said ``Connection: keep-alive`` (RFC 9112
        9.6 forbids that), so a client's next request on it met a closed connection.
        Here the whole body is already in the spool the intake read it into, bounded by
        the body limits: reading the rest costs no network wait, so it is drained whole."""
        if keepalive and self.buffering and isinstance(conn.sock, BufferedSocket) and conn.sock.local:
            return bool(conn.parser.finish_body())
        return super()._keepalive_after(conn, keepalive)

    def finish_request(self, conn, fs):
        super().finish_request(conn, fs)
        surplus = getattr(conn.sock, "surplus", b"")
        if surplus and self.keepalived_conns and self.keepalived_conns[-1] is conn:
            # A pipelined request: its first bytes came with the previous one.
            self.keepalived_conns.pop()
            self.poller.unregister(conn.sock)
            conn.sock.surplus = b""
            self.start_intake(conn, surplus)

    # -- reading requests -----------------------------------------------------------------

    def start_intake(self, conn: IntakeConn, initial: bytes = b"") -> None:
        intake = Intake(conn, client_key(conn.client), self.settings)
        conn.sock.setblocking(False)
        self.intakes[id(conn)] = intake
        self.pending_by_client[intake.client] += 1
        self.poller.register(conn.sock.raw, selectors.EVENT_READ, partial(self.on_intake_readable, intake))
        if initial:
            self.advance(intake, initial)

    def on_intake_readable(self, intake: Intake, raw) -> None:
        try:
            data = raw.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.drop(intake)
        if not data:
            return self.drop(intake)
        self.advance(intake, data)

    def advance(self, intake: Intake, data: bytes) -> None:
        waited_for_head = intake.head is None
        try:
            request = intake.feed(data)
        except Refusal as refusal:
            return self.drop(intake, refusal)
        if request is None:
            if waited_for_head and intake.head is not None and intake.head.expects_continue:
                send_quietly(intake.conn.sock.raw, b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self.end_intake(intake)
        head, body, surplus = request
        conn = intake.conn
        conn.sock.hand(head, body, local=intake.head.body != "gunicorn")
        conn.sock.surplus = surplus
        conn.data_ready = True
        self.enqueue_req(conn)

    def end_intake(self, intake: Intake) -> None:
        self.intakes.pop(id(intake.conn), None)
        self.pending_by_client[intake.client] -= 1
        if self.pending_by_client[intake.client] <= 0:
            del self.pending_by_client[intake.client]
        try:
            self.poller.unregister(intake.conn.sock.raw)
        except (KeyError, ValueError, OSError):
            pass

    def drop(self, intake: Intake, refusal: Refusal | None = None) -> None:
        """Close a connection whose request will not be served, answering why if there is
        a reason the client should hear."""
        self.end_intake(intake)
        intake.discard()
        raw = intake.conn.sock.raw
        self.nr_conns -= 1
        if refusal is None:
            raw.close()
            return
        send_quietly(raw, self.error_answer(refusal))
        self.linger(raw)  # a close with the request unread would reset the answer away

    @staticmethod
    def error_answer(refusal: Refusal, extra_headers: str = "") -> bytes:
        from ..serve import json_error_bytes
        return json_error_bytes(refusal.status, refusal.reason, refusal.detail, extra_headers)

    # -- deadlines and closing ------------------------------------------------------------

    def murder_pending(self):
        super().murder_pending()
        now = time.monotonic()
        if now - self.last_scan < SCAN_EVERY:
            return
        self.last_scan = now
        for intake in [i for i in self.intakes.values() if i.overdue(now)]:
            stage = "headers" if intake.head is None else "body"
            self.drop(intake, Refusal(408, "Request Timeout", f"the request's {stage} came too slowly"))
        for key, (raw, until) in list(self.lingering.items()):
            if now > until:
                self.end_linger(key)

    def linger(self, raw: socket.socket) -> None:
        """Close after the answer (RFC 9112 section 9.6): send FIN, then read and discard
        what the client still sends, until it closes or LINGER_SECONDS pass."""
        try:
            raw.shutdown(socket.SHUT_WR)
            raw.setblocking(False)
            self.poller.register(raw, selectors.EVENT_READ, partial(self.on_linger_readable, id(raw)))
        except (OSError, ValueError, KeyError):
            raw.close()
            return
        self.lingering[id(raw)] = (raw, time.monotonic() + LINGER_SECONDS)

    def on_linger_readable(self, key: int, raw) -> None:
        try:
            if raw.recv(RECV_BYTES):
                return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        self.end_linger(key)

    def end_linger(self, key: int) -> None:
        raw, _ = self.lingering.pop(key)
        try:
            self.poller.unregister(raw)
        except (KeyError, ValueError, OSError):
            pass
        raw.close()
