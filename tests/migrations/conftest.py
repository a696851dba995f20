"""Fixtures of the migration tests: a database as the last release left it, a second empty
database to compare with, and a configuration file naming the test's database."""
from __future__ import annotations

import json
import os
import uuid

import pytest
from sqlalchemy import text

from fhirimg.store import make_engine

from ..conftest import postgres_url
from ..services import database_url_of, free_port
from .release import load_release_database


@pytest.fixture
def bare_engine(database):
    """An engine on the test's database, its schema NOT created."""
    url, schema = database
    engine = make_engine(url, schema=schema)
    yield engine
    engine.dispose()


@pytest.fixture
def release_engine(backend, database, bare_engine):
    """The test's database holding what the release before versioned migrations wrote."""
    url, schema = database
    load_release_database(backend, url, schema)
    return bare_engine


@pytest.fixture
def config_file(tmp_path, database):
    """A TOML configuration naming the test's database (what `--config` is given)."""
    path = tmp_path / "fhirimg.toml"
    path.write_text(f"database_url = {json.dumps(database_url_of(database))}\n"
                    f"var_dir = {json.dumps(str(tmp_path / 'var'))}\n"
                    f"[serve]\nport = {free_port()}\nworkers = 1\n")
    return path


@pytest.fixture
def other_engine(backend, database, tmp_path):
    """An engine on a second empty database of the same kind, to compare schemas with
    (after `database`, which skips the test without PostgreSQL)."""
    if backend == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'other.db'}")
        yield engine
        engine.dispose()
        return
    url, schema = postgres_url(), f"t_{os.getpid()}_{uuid.uuid4().hex[:10]}_b"
    admin = make_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    engine = make_engine(url, schema=schema)
    yield engine
    engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()
