"""Where an HTTP/1.1 request ends, found while its bytes arrive (RFC 9112 sections 6 and 7).

The intake reads requests in the worker's event loop, so it must know when one is whole
without a thread blocking on the client. It does not interpret the request: gunicorn's
parser reads it again, from the bytes kept here, and stays the judge of what is valid.
Where a head is one gunicorn will refuse (two Content-Lengths, Content-Length beside
Transfer-Encoding, an unknown coding), the intake hands over the head alone and gunicorn
answers its 400 without reading further.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

MAX_HEAD_BYTES = 64 * 1024  # request line and every header field, together
MAX_CHUNK_LINE = 4096       # a chunk-size line with its extensions, or one trailer field
MAX_TRAILER_BYTES = 16 * 1024
HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
HEAD_END = b"\r\n\r\n"


class Refusal(Exception):
    """The request cannot be taken at all; answered with `status` and closed."""

    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


@dataclass
class Head:
    """What the intake needs of a request head. `raw` is the head as gunicorn will read it:
    an `Expect: 100-continue` the intake has already answered is taken out."""

    raw: bytes
    body: str                 # "none", "length", "chunked", or "gunicorn" (head only: it refuses)
    length: int = 0
    expects_continue: bool = False


def find_head_end(buffer: bytearray, searched: int) -> int:
    """Index just past the blank line that ends the head, or -1; `searched` is how much of
    `buffer` was looked at before (the search restarts three bytes earlier)."""
    at = buffer.find(HEAD_END, max(0, searched - 3))
    return -1 if at < 0 else at + 4


def parse_head(raw: bytes, max_body: int) -> Head:
    """The head's framing: Content-Length, chunked, or none."""
    lines = raw[:-4].split(b"\r\n")
    version = lines[0].rsplit(b" ", 1)[-1]
    kept, lengths, codings, expects = [lines[0]], [], [], False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return Head(raw, "gunicorn")
        name, value = name.lower(), value.strip()
        if name == b"content-length":
            lengths.append(value)
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
        elif name == b"expect" and value.lower() == b"100-continue" and version == b"HTTP/1.1":
            expects = True
            continue
        kept.append(line)
    raw = raw if not expects else b"\r\n".join(kept) + HEAD_END
    if codings:
        chunked = not lengths and codings[-1] == b"chunked"
        return Head(raw, "chunked" if chunked else "gunicorn", expects_continue=expects and chunked)
    if not lengths:
        return Head(raw, "none")
    if len(set(lengths)) != 1 or not lengths[0].isdigit():
        return Head(raw, "gunicorn")
    length = int(lengths[0])
    if length > max_body:
        raise Refusal(413, "Content Too Large", f"the body is {length} bytes; this server takes at most {max_body}")
    return Head(raw, "length" if length else "none", length, expects and length > 0)


class ChunkedEnd:
    """Follows a chunked body's framing to its last chunk and trailer section, without
    decoding it: the bytes go to gunicorn untouched."""

    def __init__(self, max_body: int):
        self.state = "size"
        self.line = bytearray()
        self.left = 0
        self.data = 0
        self.trailer = 0
        self.max_body = max_body

    def feed(self, data: bytes) -> Optional[int]:
        """How many bytes of `data` end the body, or None if it goes on past them."""
        at, size = 0, len(data)
        while at < size:
            if self.state == "data":
                take = min(self.left, size - at)
                at += take
                self.left -= take
                if not self.left:
                    self.state = "crlf"
                continue
            newline = data.find(b"\n", at)
            end = size if newline < 0 else newline + 1
            self.line += data[at:end]
            at = end
            if len(self.line) > MAX_CHUNK_LINE:
                raise Refusal(400, "Bad Request", "a chunk-size line or trailer field is too long")
            if newline < 0:
                return None
            if self.take_line(bytes(self.line)):
                return at
            self.line.clear()
        return None

    def take_line(self, line: bytes) -> bool:
        """One CRLF-terminated line of framing; True when it was the body's last."""
        if not line.endswith(b"\r\n"):
            raise Refusal(400, "Bad Request", "chunked framing lines end with CRLF")
        line = line[:-2]
        if self.state == "crlf":
            if line:
                raise Refusal(400, "Bad Request", "a chunk's data is longer than its size")
            self.state = "size"
        elif self.state == "size":
            self.start_chunk(line.split(b";", 1)[0].strip())
        else:  # trailer section: fields until a blank line
            self.trailer += len(line) + 2
            if self.trailer > MAX_TRAILER_BYTES:
                raise Refusal(400, "Bad Request", "the trailer section is too long")
            return not line
        return False

    def start_chunk(self, token: bytes) -> None:
        if not HEX.fullmatch(token):
            raise Refusal(400, "Bad Request", "a chunk size is not hexadecimal")
        self.left = int(token, 16)
        self.data += self.left
        if self.data > self.max_body:
            raise Refusal(413, "Content Too Large", f"the body is over {self.max_body} bytes")
        self.state = "data" if self.left else "trailer"
