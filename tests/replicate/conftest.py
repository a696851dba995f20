"""Two (or three) real fhirimg sites, each with its own database, served over loopback.

Each site is create_app() on its own SQLite file or PostgreSQL schema, served by a
threaded werkzeug server on a free port; ``site.run(link)`` runs replication the way the
CLI and the RQ job do (runner.Site over the same database).
"""
from __future__ import annotations

import os
import threading
import uuid

import pytest
from sqlalchemy import text
from werkzeug.serving import make_server

from fhirimg.app import create_app
from fhirimg.config import load_config
from fhirimg.replicate.runner import Site, run_link_once
from fhirimg.replicate.settings import Link
from fhirimg.store import make_engine

from ..auth_support import ANONYMOUS
from ..conftest import postgres_url
from ..services import require_or_skip


class ServedSite:
    def __init__(self, name: str, db_url: str, schema: str | None, replicate: dict | None = None,
                 auth: dict | None = None):
        self.name = name
        self.db_url = db_url
        self.schema = schema
        self.engine = make_engine(db_url, schema=schema)
        overrides = {"database_url": db_url, "replicate": {"page_size": 50, "backoff_base": 0.05,
                                                           "backoff_max": 0.2, **(replicate or {})},
                     # Replication semantics over anonymous sites; tests/auth replicates between
                     # two sites in smart mode.
                     "auth": auth or ANONYMOUS}
        self.config = load_config(env={}, read_files=False, overrides=overrides)
        self.app = create_app(self.config, engine=self.engine)
        self.server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/fhir"
        self.site = Site(self.config, engine=self.engine)

    def link(self, direction: str, peer: "ServedSite", name: str | None = None, **extra) -> Link:
        return Link(name=name or f"{direction}-{peer.name}", direction=direction, url=peer.url,
                    conflict_rule=extra.pop("conflict_rule", "source-wins"), **extra)

    def run(self, link: Link):
        result = run_link_once(self.site, link)
        assert not result.errors, result.errors
        return result

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)
        self.engine.dispose()


@pytest.fixture
def make_site(backend, tmp_path):
    made: list[ServedSite] = []
    schemas: list[str] = []
    admin = None

    def make(name: str, replicate: dict | None = None, auth: dict | None = None) -> ServedSite:
        nonlocal admin
        if backend == "sqlite":
            site = ServedSite(name, f"sqlite:///{tmp_path / (name + '.db')}", None, replicate, auth)
        else:
            url = postgres_url()
            if not url:
                require_or_skip("PostgreSQL tests need FHIRIMG_TEST_POSTGRES_URL")
            schema = f"r_{os.getpid()}_{uuid.uuid4().hex[:10]}"
            admin = admin or make_engine(url)
            with admin.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA "{schema}"'))
            schemas.append(schema)
            site = ServedSite(name, url, schema, replicate, auth)
        made.append(site)
        return site

    yield make
    for site in made:
        site.stop()
    if admin is not None:
        with admin.begin() as conn:
            for schema in schemas:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()
