"""Where a request ends, found while its bytes arrive (fhirimg.intake.framing)."""
from __future__ import annotations

import pytest

from fhirimg.intake.framing import ChunkedEnd, Refusal, find_head_end, parse_head

BODY = b"4\r\nWiki\r\n6;name=v\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nExpires: never\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 7, len(BODY)])
def test_the_end_of_a_chunked_body_is_found_however_it_is_cut(step):
    ends = ChunkedEnd(max_body=1000)
    stream = BODY + b"GET / HTTP/1.1\r\n"  # the next request follows
    fed = 0
    for at in range(0, len(stream), step):
        found = ends.feed(stream[at:at + step])
        if found is not None:
            fed = at + found
            break
    assert fed == len(BODY)


@pytest.mark.parametrize("body, detail", [
    (b"0x4\r\n", "not hexadecimal"), (b"1_0\r\n", "not hexadecimal"), (b"+4\r\n", "not hexadecimal"),
    (b"4\r\nWikipedia\r\n", "longer than its size"), (b"4\nWiki", "end with CRLF"),
    (b"A" * 5000, "too long"),
])
def test_broken_chunked_framing_is_refused(body, detail):
    with pytest.raises(Refusal) as refused:
        ChunkedEnd(max_body=1000).feed(body)
    assert refused.value.status == 400 and detail in refused.value.detail


def test_a_chunked_body_over_the_limit_is_413_before_its_data_arrives():
    with pytest.raises(Refusal) as refused:
        ChunkedEnd(max_body=1000).feed(b"3E9\r\n")
    assert refused.value.status == 413


def test_the_head_end_is_found_across_reads():
    buffer = bytearray(b"GET / HTTP/1.1\r\nHost: x\r\n\r")
    assert find_head_end(buffer, 0) == -1
    searched = len(buffer)
    buffer += b"\nBODY"
    assert find_head_end(buffer, searched) == len(buffer) - 4


def test_framing_of_heads():
    assert parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 100).body == "none"
    head = parse_head(b"POST / HTTP/1.1\r\ncontent-LENGTH: 12\r\n\r\n", 100)
    assert (head.body, head.length) == ("length", 12)
    assert parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 100).body == "chunked"
    # What gunicorn refuses, it is given to refuse: the head alone.
    for refused in (b"Content-Length: 1\r\nContent-Length: 2", b"Content-Length: -1",
                    b"Content-Length: 1\r\nTransfer-Encoding: chunked", b"Transfer-Encoding: gzip"):
        assert parse_head(b"POST / HTTP/1.1\r\n" + refused + b"\r\n\r\n", 100).body == "gunicorn"
    with pytest.raises(Refusal) as too_large:
        parse_head(b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", 100)
    assert too_large.value.status == 413


def test_an_answered_expect_is_taken_out_of_the_head():
    head = parse_head(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n", 100)
    assert head.expects_continue and head.raw == b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\n"
    # HTTP/1.0 expectations are ignored (RFC 9110 10.1.1); other expectations are gunicorn's 417.
    assert not parse_head(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", 100).expects_continue
    odd = parse_head(b"POST / HTTP/1.1\r\nExpect: magic\r\nContent-Length: 3\r\n\r\n", 100)
    assert b"Expect: magic" in odd.raw and not odd.expects_continue


def test_a_client_is_its_address_or_its_ipv6_64():
    from fhirimg.intake.worker import client_key
    assert client_key(("192.0.2.7", 5000)) == "192.0.2.7"
    assert client_key(("2001:db8:1:2:aaaa::1", 5000, 0, 0)) == client_key(("2001:db8:1:2:bbbb::9", 1, 0, 0))
    assert client_key(("2001:db8:1:3::1", 5000, 0, 0)) != client_key(("2001:db8:1:2::1", 5000, 0, 0))
    assert client_key("") == ""  # a unix socket
