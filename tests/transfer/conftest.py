"""Fixtures of the transfer tests: database, blob store, a private Orthanc and a fault proxy."""
from __future__ import annotations

import pytest

from fhirimg.store import create_schema, make_engine
from fhirimg.transfer.blobstore import BlobStore
from fhirimg.transfer.schema import create_transfer_schema

from .faultproxy import FaultProxy
from .orthanc import OrthancServer


@pytest.fixture
def engine(tmp_path):  # noqa: F811 - SQLite only, see docstring
    """SQLite only: the transfer tables use nothing dialect-specific, and Orthanc tests are slow enough."""
    engine = make_engine(f"sqlite:///{tmp_path / 'transfer.db'}")
    create_schema(engine)
    create_transfer_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def blobstore(tmp_path, engine):
    return BlobStore(tmp_path / "blobs", engine)


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory):
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"))
    yield server
    server.stop()


@pytest.fixture
def fault_proxy(orthanc):
    proxy = FaultProxy(orthanc.port)
    yield proxy
    proxy.stop()
