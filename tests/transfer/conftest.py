"""Fixtures of the transfer tests: database, blob store, synthetic studies, and private services."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from fhirimg.store.engine import make_engine  # noqa: E402
from fhirimg.transfer.blobstore import BlobStore  # noqa: E402
from fhirimg.transfer.schema import create_transfer_schema  # noqa: E402

pytest_plugins = ["services_fixtures"]


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'transfer.db'}")
    create_transfer_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def blobstore(tmp_path, engine):
    return BlobStore(tmp_path / "blobs", engine)
