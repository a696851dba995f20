"""Streaming reader for multipart/related bodies (RFC 2046 §5.1, PS3.18 §8.6.1).

WADO-RS answers a series retrieve with one multipart/related body holding
hundreds of DICOM files. The reader works on an iterator of byte chunks, never
holds more than one chunk plus ``len(delimiter)`` bytes, and finds delimiters
with ``bytes.find`` on that window only, so its cost is linear in the body size
whatever the chunk sizes are (the quadratic rescan that hurt dicomweb-client is
impossible by construction). Each part is written to a sink as it arrives; a
part whose delimiter never came (the body broke off) is reported incomplete.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterable, Iterator

MAX_HEADER_BYTES = 16 * 1024
MAX_BOUNDARY_LENGTH = 70  # RFC 2046 §5.1.1

_BOUNDARY_CHARS = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")


class MultipartError(ValueError):
    """The body is not a multipart body we can read safely."""


class PartTooLarge(MultipartError):
    """A part grew past its limit: it was cut there, nothing beyond was written."""

    def __init__(self, limit: int):
        super().__init__(f"part larger than the limit of {limit} bytes")
        self.limit = limit


@dataclass
class Part:
    """One body part: its headers, the sink holding its bytes, and whether it ended cleanly."""

    headers: dict[str, str]
    sink: BinaryIO
    size: int = 0
    is_complete: bool = False


@dataclass
class MediaType:
    """A parsed Content-Type: lower-cased type/subtype and its parameters."""

    mime: str
    params: dict[str, str] = field(default_factory=dict)


SinkFactory = Callable[[dict[str, str]], BinaryIO]
# A part's size limit: fixed, or asked again as the part grows (the caller may learn the
# announced size of what is arriving while it arrives).
PartLimit = int | Callable[[], int] | None


def parse_media_type(value: str) -> MediaType:
    """Parse ``type/subtype; k=v; k="quoted; value"`` (RFC 9110 §8.3.1)."""
    mime, _, rest = value.partition(";")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM.match(rest, pos)
        if not match:
            break
        key = match.group("key").lower()
        raw = match.group("quoted")
        params[key] = _unquote(raw) if raw is not None else match.group("token")
        pos = match.end()
    return MediaType(mime.strip().lower(), params)


_PARAM = re.compile(
    r'\s*;?\s*(?P<key>[^=;\s]+)\s*=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"|(?P<token>[^;\s]*))\s*'
)


def _unquote(value: str) -> str:
    return re.sub(r"\\(.)", r"\1", value)


def boundary_from_content_type(content_type: str) -> str:
    """Return the boundary parameter of a multipart Content-Type, validated per RFC 2046."""
    media = parse_media_type(content_type)
    if not media.mime.startswith("multipart/"):
        raise MultipartError(f"not a multipart body: {media.mime!r}")
    boundary = media.params.get("boundary")
    if not boundary or not _BOUNDARY_CHARS.match(boundary) or boundary.endswith(" "):
        raise MultipartError("missing or invalid multipart boundary")
    return boundary


def open_body_reader(
    content_type: str, open_sink: SinkFactory, max_part_bytes: PartLimit = None
) -> "MultipartReader | SinglePartReader":
    """Pick the reader for a response: multipart, or a lone ``application/dicom`` answer.

    Servers asked for multipart sometimes answer with one bare DICOM object; it is
    read as a single part whose end is the end of the body. Both readers expose
    ``read(chunks)`` yielding parts and ``is_closed`` once the body ended properly.
    """
    media = parse_media_type(content_type or "")
    if media.mime.startswith("multipart/"):
        return MultipartReader(boundary_from_content_type(content_type), open_sink, max_part_bytes)
    if media.mime != "application/dicom":
        raise MultipartError(f"unexpected media type {media.mime or 'none'!r}")
    return SinglePartReader({"content-type": content_type}, open_sink, max_part_bytes)


class SinglePartReader:
    """The whole body is one part (a bare ``application/dicom`` answer)."""

    def __init__(self, headers: dict[str, str], open_sink: SinkFactory, max_part_bytes: PartLimit):
        self.headers = headers
        self.open_sink = open_sink
        self.max_part_bytes = max_part_bytes
        self.is_closed = False
        self.part_count = 0
        self.current: Part | None = None

    def read(self, chunks: Iterable[bytes]) -> Iterator[Part]:
        """Copy the body into one sink; the part is complete when the body ends."""
        part = self.current = Part(headers=self.headers, sink=self.open_sink(self.headers))
        self.part_count = 1
        for chunk in chunks:
            part.size += len(chunk)
            _check_size(part, self.max_part_bytes)
            part.sink.write(chunk)
        part.is_complete = self.is_closed = True
        self.current = None
        yield part


def _check_size(part: Part, max_part_bytes: PartLimit) -> None:
    """Before a write: a part that would grow past its limit, or past the Content-Length it
    declared itself, is cut (PartTooLarge)."""
    limit = max_part_bytes() if callable(max_part_bytes) else max_part_bytes
    declared = part.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and (limit is None or int(declared) < limit):
        limit = int(declared)
    if limit is not None and part.size > limit:
        raise PartTooLarge(limit)


class MultipartReader:
    """State machine over a sliding window.

    ``is_closed`` tells whether the close delimiter came; ``current`` is the part being
    written, if any, so that a caller whose stream broke can discard its sink.
    """

    def __init__(self, boundary: str, open_sink: SinkFactory, max_part_bytes: PartLimit = None):
        # The leading CRLF belongs to the delimiter (RFC 2046 §5.1.1); a body that
        # starts with the boundary at offset 0 is handled by pretending a CRLF precedes it.
        self.delimiter = b"\r\n--" + boundary.encode("ascii")
        self.open_sink = open_sink
        self.max_part_bytes = max_part_bytes
        self.is_closed = False
        self.part_count = 0
        self._buf = bytearray(b"\r\n")
        self._state = self._in_preamble
        self.current: Part | None = None

    def read(self, chunks: Iterable[bytes]) -> Iterator[Part]:
        """Feed every chunk through the state machine, yielding each part once it is finished."""
        for chunk in chunks:
            if not chunk:
                continue
            self._buf += chunk
            yield from self._drain()
        yield from self._finish()

    def _drain(self) -> Iterator[Part]:
        while True:
            outcome = self._state()
            if outcome is None:
                return
            if isinstance(outcome, Part):
                yield outcome

    def _in_preamble(self):
        index = self._buf.find(self.delimiter)
        if index < 0:
            keep = len(self.delimiter) - 1
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            return None
        del self._buf[: index + len(self.delimiter)]
        self._state = self._after_delimiter
        return True

    def _after_delimiter(self):
        """After ``--boundary``: ``--`` closes the body, else padding then CRLF opens a part."""
        if len(self._buf) < 2:
            return None
        if self._buf[:2] == b"--":
            self.is_closed = True
            self._buf.clear()
            self._state = self._in_epilogue
            return None
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > 256:
                raise MultipartError("garbage after a multipart boundary")
            return None
        if self._buf[:end].strip(b" \t"):
            raise MultipartError("garbage after a multipart boundary")
        del self._buf[: end + 2]
        self._state = self._in_headers
        return True

    def _in_headers(self):
        if self._buf[:2] == b"\r\n":
            raw = b""
            del self._buf[:2]
        else:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEADER_BYTES:
                    raise MultipartError("part headers too large")
                return None
            if end > MAX_HEADER_BYTES:
                raise MultipartError("part headers too large")
            raw = bytes(self._buf[:end])
            del self._buf[: end + 4]
        headers = parse_part_headers(raw)
        self.current = Part(headers=headers, sink=self.open_sink(headers))
        self.part_count += 1
        self._state = self._in_body
        return True

    def _in_body(self):
        part = self.current
        index = self._buf.find(self.delimiter)
        if index < 0:
            # Keep only what could be the start of a delimiter split across chunks.
            self._write_body(len(self._buf) - (len(self.delimiter) - 1))
            return None
        self._write_body(index)
        del self._buf[: len(self.delimiter)]
        part.is_complete = True
        self.current = None
        self._state = self._after_delimiter
        return part

    def _write_body(self, count: int) -> None:
        if count <= 0:
            return
        part = self.current
        part.size += count
        _check_size(part, self.max_part_bytes)
        with memoryview(self._buf) as view:
            part.sink.write(view[:count])
        del self._buf[:count]

    def _in_epilogue(self):
        self._buf.clear()
        return None

    def _finish(self) -> Iterator[Part]:
        """End of input: an open part is flushed and reported incomplete (truncated body)."""
        if self._state == self._in_body:
            self._write_body(len(self._buf))
            part, self.current = self.current, None
            yield part
        elif self._state == self._in_preamble and self.part_count == 0:
            raise MultipartError("no multipart boundary found in the body")


def parse_part_headers(raw: bytes) -> dict[str, str]:
    """Parse a part's header block into lower-case names; obsolete line folding is joined."""
    headers: dict[str, str] = {}
    text = raw.decode("latin-1")
    last = None
    for line in text.split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last:
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise MultipartError(f"malformed part header line {line[:60]!r}")
        last = name.strip().lower()
        headers[last] = value.strip()
    return headers
