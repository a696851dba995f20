"""Fixtures of the blob store tests: one SeaweedFS S3 server per session, a fresh bucket per test."""
from __future__ import annotations

import contextlib
import uuid

import pytest
import requests

from .seaweed import SeaweedS3


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory):
    """A private SeaweedFS S3 server (`weed mini`) shared by the session's tests."""
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    yield server
    server.stop(grace=0)  # its data goes with the temporary directory: no graceful stop (~2 s)


@pytest.fixture
def bucket(seaweed) -> str:
    """The name of a new, empty bucket of `seaweed`, deleted with its objects afterwards.

    A bucket is a SeaweedFS collection with its own volume: the first write into it takes
    ~0.2 s more than the next ones."""
    name = "t-" + uuid.uuid4().hex
    seaweed.create_bucket(name)
    yield name
    # A test that killed the server must not have its own failure hidden by this one.
    with contextlib.suppress(requests.RequestException):
        seaweed.delete_bucket(name)


@pytest.fixture
def private_seaweed(tmp_path):
    """A SeaweedFS server of this test alone, for fault tests that kill or restart it."""
    server = SeaweedS3(tmp_path / "seaweed")
    yield server
    server.stop(grace=0)


@pytest.fixture(params=["file", "s3"])
def kept_in(request) -> str:
    """Where the objects are kept ("backend" names the database in tests/conftest.py)."""
    return request.param


@pytest.fixture
def store_factory(kept_in, tmp_path, engine, request):
    """BlobStores on the backend under test (each call: the same objects, a new store)."""
    from fhirimg.blobs.s3 import S3Objects
    from fhirimg.transfer.blobstore import BlobStore

    from .test_backends import s3_settings

    def make(**s3_extra) -> BlobStore:
        if kept_in == "file":
            return BlobStore(tmp_path / "blobs", engine)
        seaweed, bucket = request.getfixturevalue("seaweed"), request.getfixturevalue("bucket")
        return BlobStore(tmp_path / "blobs", engine,
                         objects=S3Objects.from_settings(s3_settings(seaweed, bucket, **s3_extra)["s3"]))
    return make
