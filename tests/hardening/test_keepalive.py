"""Issue 21: a kept-alive connection survives an answer sent before the body was read.

A POST of 100-600 KB answered early (415 for XML, 415 for a STOW body of the wrong type)
said ``Connection: keep-alive``, yet gunicorn drained only 64 KiB of the unread body and
then closed: the client's next request on that connection met "Remote end closed
connection without response" (40 of 40 tries before the fix).
"""
from __future__ import annotations

import http.client
import json

import pytest

from .test_slowloris import Server


@pytest.fixture(scope="module")
def server():
    started = Server(workers=1)
    yield started
    started.stop()


@pytest.mark.parametrize("path,content_type", [
    ("/fhir/Patient", "application/fhir+xml"),
    ("/dicom-web/studies", "text/plain"),
])
def test_the_next_request_on_a_connection_is_answered_after_an_early_refusal(server, path, content_type):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        for size in range(100_000, 640_000, 60_000):
            connection.request("POST", path, body=b"<Patient>" + b"x" * size,
                               headers={"Content-Type": content_type})
            refused = connection.getresponse()
            outcome = json.loads(refused.read())
            assert refused.status == 415 and outcome["resourceType"] == "OperationOutcome"
            assert refused.getheader("Connection") == "keep-alive"
            connection.request("GET", "/fhir/metadata")
            following = connection.getresponse()
            assert following.status == 200, size
            assert json.loads(following.read())["resourceType"] == "CapabilityStatement"
    finally:
        connection.close()


def test_a_chunked_body_refused_early_is_drained_too(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        body = (b"y" * 50_000 for _ in range(8))  # 400 KB in chunks
        connection.request("POST", "/fhir/Patient", body=body, encode_chunked=True,
                           headers={"Content-Type": "application/fhir+xml", "Transfer-Encoding": "chunked"})
        refused = connection.getresponse()
        refused.read()
        assert refused.status == 415
        connection.request("GET", "/fhir/metadata")
        assert connection.getresponse().status == 200
    finally:
        connection.close()
