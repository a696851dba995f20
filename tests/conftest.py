"""Shared fixtures: one database per test on SQLite and on PostgreSQL, the app, services."""
from __future__ import annotations

import os
import uuid

import pytest
from sqlalchemy import text

from fhirimg.app import create_app
from fhirimg.config import load_config
from fhirimg.store import create_schema, make_engine

from .auth_support import authorized
from .services import RedisServer, require_or_skip

BACKENDS = ["sqlite", "postgres"]


def postgres_url() -> str | None:
    return os.environ.get("FHIRIMG_TEST_POSTGRES_URL")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def database(backend, tmp_path):
    """(url, schema) of an empty database private to this test."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fhirimg.db'}", None
        return
    url = postgres_url()
    if not url:
        require_or_skip("PostgreSQL tests need FHIRIMG_TEST_POSTGRES_URL "
                        "(e.g. postgresql://postgres@127.0.0.1:5432/test)")
    schema = f"t_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    admin = make_engine(url)
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - report any connection problem as the reason
        admin.dispose()
        require_or_skip(f"PostgreSQL at {url} is not reachable: {exc}")
    yield url, schema
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def engine(database):
    url, schema = database
    eng = make_engine(url, schema=schema)
    create_schema(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def config(database):
    url, _ = database
    return load_config(env={}, read_files=False,
                       overrides={"database_url": url, "limits": {"max_body_bytes": 2 * 1024 * 1024}})


@pytest.fixture
def app(config, engine):
    return create_app(config, engine=engine)


@pytest.fixture
def client(app):
    """The API as a backend client with system/*.cruds sees it: every request carries a
    bearer token from the app's own token endpoint (auth.mode = "smart", the default)."""
    return authorized(app)


@pytest.fixture
def repo(app):
    return app.extensions["fhirimg.repository"]


@pytest.fixture
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


def table_counts(engine) -> dict[str, int]:
    """Row count of every table: what tests compare to prove that nothing was written. The
    audit trail is left out: a refused request is itself recorded there (tests/audit checks it)."""
    from fhirimg.store.schema import _extra_metadata, metadata
    counts = {}
    with engine.connect() as conn:
        for md in [metadata, *_extra_metadata]:
            for table in md.sorted_tables:
                if table.name.startswith("audit_"):
                    continue
                counts[table.name] = conn.execute(text(f'SELECT count(*) FROM "{table.name}"')).scalar()
    return counts
