"""A fault-injecting HTTP proxy of the tests' own, in front of Orthanc.

Orthanc never answers 429/503 and never breaks a connection, so the faults real
archives produce are made here: throttling with Retry-After, connections dropped in
the middle of a part, bodies truncated at a byte count.
"""
from __future__ import annotations

import http.client
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authenticate", "proxy-authorization", "content-length"}


@dataclass
class Fault:
    kind: str  # "status" | "drop" | "truncate" | "slow" (sleep `delay` s per 64 KiB relayed)
    path_pattern: str = ".*"
    times: int = 1
    status: int = 503
    retry_after: str | None = "1"
    after_bytes: int = 0
    delay: float = 0.0


class FaultProxy:
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str]] = []  # (path, what happened)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                proxy.handle(self)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.dicomweb = self.url + "/dicom-web"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(self, fault: Fault) -> None:
        with self.lock:
            self.faults.append(fault)

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.log.clear()

    def take_fault(self, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and re.search(fault.path_pattern, path):
                    fault.times -= 1
                    return fault
        return None

    def record(self, path: str, what: str) -> None:
        with self.lock:
            self.log.append((path, what))

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        fault = self.take_fault(handler.path)
        if fault and fault.kind == "status":
            self.record(handler.path, f"status {fault.status}")
            handler.send_response(fault.status)
            if fault.retry_after is not None:
                handler.send_header("Retry-After", fault.retry_after)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        self.relay(handler, fault)

    def relay(self, handler: BaseHTTPRequestHandler, fault: Fault | None) -> None:
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream.request("GET", handler.path, headers=headers)
        response = upstream.getresponse()
        handler.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP:
                handler.send_header(key, value)
        handler.end_headers()
        limit = fault.after_bytes if fault and fault.kind in ("drop", "truncate") else None
        sent = 0
        while True:
            block = response.read(65536)
            if not block:
                break
            if limit is not None and sent + len(block) >= limit:
                handler.wfile.write(block[: limit - sent])
                handler.wfile.flush()
                self.record(handler.path, f"{fault.kind} after {limit} bytes")
                if fault.kind == "drop":
                    reset_connection(handler.connection)
                upstream.close()
                return
            handler.wfile.write(block)
            sent += len(block)
            if fault and fault.kind == "slow":
                time.sleep(fault.delay)
        self.record(handler.path, "relayed")
        upstream.close()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def reset_connection(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the client sees a TCP reset, like a crashed middlebox."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
