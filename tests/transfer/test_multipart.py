"""Streaming multipart reader: correctness against a naive whole-body parser."""
from __future__ import annotations

import io
import random

import pytest

from fhirimg.transfer.multipart import (
    MultipartError,
    MultipartReader,
    boundary_from_content_type,
    open_body_reader,
    parse_media_type,
)


def build_body(parts: list[bytes], boundary: str, closed: bool = True, preamble: bytes = b"") -> bytes:
    out = [preamble]
    for index, payload in enumerate(parts):
        out.append((b"\r\n" if index or preamble else b"") + b"--" + boundary.encode())
        out.append(b"\r\nContent-Type: application/dicom\r\n\r\n" + payload)
    if closed:
        out.append(b"\r\n--" + boundary.encode() + b"--\r\n")
    return b"".join(out)


def reference_parse(body: bytes, boundary: str) -> list[bytes]:
    """Split the whole body at once: the obvious, slow, correct parser."""
    delimiter = b"\r\n--" + boundary.encode()
    segments = (b"\r\n" + body).split(delimiter)[1:]
    payloads = []
    for segment in segments:
        if segment.startswith(b"--"):
            break
        payloads.append(segment.split(b"\r\n\r\n", 1)[1])
    return payloads


def read_all(body: bytes, content_type: str, sizes) -> tuple[list, object]:
    reader = open_body_reader(content_type, lambda headers: io.BytesIO())
    chunks = chunked(body, sizes)
    parts = list(reader.read(chunks))
    return parts, reader


def chunked(body: bytes, sizes):
    pos = 0
    while pos < len(body):
        size = next(sizes)
        yield body[pos : pos + size]
        pos += size


def fixed(n):
    while True:
        yield n


def test_parts_are_returned_with_headers_and_exact_bytes():
    body = build_body([b"first", b"second\r\n"], "abc")
    parts, reader = read_all(body, 'multipart/related; type="application/dicom"; boundary=abc', fixed(7))
    assert [p.sink.getvalue() for p in parts] == [b"first", b"second\r\n"]
    assert all(p.is_complete for p in parts)
    assert parts[0].headers["content-type"] == "application/dicom"
    assert reader.is_closed


def test_boundary_like_bytes_inside_pixel_data_do_not_split_the_part():
    boundary = "BOUNDARY"
    # Without its leading CRLF, or one byte short, the boundary is just pixel data.
    tricky = b"\x00\x01--BOUNDARY\r\n--BOUNDAR\r\n\n--BOUNDARY--" + b"\r\n-" * 10 + b"\xff"
    body = build_body([tricky, b"tail"], boundary)
    for size in (1, 2, 3, 5, 11, 64, 4096):
        parts, reader = read_all(body, "multipart/related; boundary=BOUNDARY", fixed(size))
        assert [p.sink.getvalue() for p in parts] == [tricky, b"tail"], size
        assert reader.is_closed


def test_quoted_boundary_with_special_characters_is_accepted():
    content_type = 'multipart/related; type="application/dicom"; boundary="a:b=c?d (e)"'
    assert boundary_from_content_type(content_type) == "a:b=c?d (e)"
    body = build_body([b"x"], "a:b=c?d (e)")
    parts, _ = read_all(body, content_type, fixed(3))
    assert parts[0].sink.getvalue() == b"x"


def test_media_type_parameters_are_parsed_case_insensitively():
    media = parse_media_type('Multipart/Related; Type="application/dicom"; transfer-syntax=*')
    assert media.mime == "multipart/related"
    assert media.params == {"type": "application/dicom", "transfer-syntax": "*"}


def test_missing_boundary_parameter_is_an_error():
    with pytest.raises(MultipartError):
        boundary_from_content_type("multipart/related; type=application/dicom")


def test_single_part_application_dicom_answer_is_read_as_one_complete_part():
    parts, reader = read_all(b"DICM" * 1000, "application/dicom", fixed(100))
    assert len(parts) == 1 and parts[0].is_complete and parts[0].sink.getvalue() == b"DICM" * 1000
    assert reader.is_closed


def test_unexpected_media_type_is_refused():
    with pytest.raises(MultipartError):
        open_body_reader("text/html", lambda h: io.BytesIO())


def test_body_without_closing_boundary_reports_last_part_incomplete():
    body = build_body([b"complete", b"cut off here"], "b0", closed=False)
    parts, reader = read_all(body, "multipart/related; boundary=b0", fixed(4))
    assert [p.is_complete for p in parts] == [True, False]
    assert parts[1].sink.getvalue() == b"cut off here"
    assert not reader.is_closed


def test_body_cut_right_after_a_delimiter_is_not_closed():
    body = build_body([b"one"], "b0", closed=False) + b"\r\n--b0\r\nContent-Ty"
    parts, reader = read_all(body, "multipart/related; boundary=b0", fixed(5))
    assert [p.sink.getvalue() for p in parts] == [b"one"]
    assert parts[0].is_complete and not reader.is_closed


def test_preamble_and_epilogue_are_ignored():
    body = build_body([b"p"], "zz", preamble=b"this is a preamble") + b"epilogue bytes"
    parts, reader = read_all(body, "multipart/related; boundary=zz", fixed(2))
    assert [p.sink.getvalue() for p in parts] == [b"p"] and reader.is_closed


def test_body_without_any_boundary_is_an_error():
    with pytest.raises(MultipartError):
        read_all(b"<html>oops</html>", "multipart/related; boundary=zz", fixed(4))


def test_part_larger_than_limit_is_refused():
    body = build_body([b"x" * 1000], "zz")
    reader = MultipartReader("zz", lambda h: io.BytesIO(), max_part_bytes=999)
    with pytest.raises(MultipartError):
        list(reader.read(chunked(body, fixed(64))))


def test_oversized_part_headers_are_refused():
    body = b"--zz\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\nbody\r\n--zz--"
    with pytest.raises(MultipartError):
        read_all(body, "multipart/related; boundary=zz", fixed(1000))


def test_part_without_headers_is_read():
    body = b"--zz\r\n\r\nnaked\r\n--zz--\r\n"
    parts, _ = read_all(body, "multipart/related; boundary=zz", fixed(3))
    assert parts[0].headers == {} and parts[0].sink.getvalue() == b"naked"


def test_random_chunking_matches_reference_parser():
    rng = random.Random(20261123)
    boundary = "3f1e-boundary"
    for _ in range(200):
        payloads = [random_payload(rng, boundary) for _ in range(rng.randint(1, 5))]
        body = build_body(payloads, boundary)
        assert reference_parse(body, boundary) == payloads
        sizes = iter(lambda: rng.randint(1, 64), None)
        parts, reader = read_all(body, f"multipart/related; boundary={boundary}", sizes)
        assert [p.sink.getvalue() for p in parts] == payloads
        assert [p.size for p in parts] == [len(p) for p in payloads]
        assert reader.is_closed


def random_payload(rng: random.Random, boundary: str) -> bytes:
    """Random bytes sprinkled with near-misses of the delimiter.

    The first byte is fixed so that the reference parser, which splits on the delimiter
    with its CRLF, cannot mistake the header terminator's CRLF for the delimiter's.
    """
    pieces = [b"x"]
    for _ in range(rng.randint(0, 8)):
        choice = rng.random()
        if choice < 0.3:
            pieces.append(("--" + boundary).encode())
        elif choice < 0.5:
            pieces.append(b"\r\n--" + boundary.encode()[: rng.randint(0, len(boundary) - 1)])
        else:
            pieces.append(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40))))
    return b"".join(pieces)
