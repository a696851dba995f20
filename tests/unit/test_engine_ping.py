"""PostgreSQL pool: idle connections are checked before use, busy ones are not, and a
connection the server dropped is replaced without the request noticing."""
from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from fhirimg.store import make_engine

from ..conftest import postgres_url
from ..services import require_or_skip


@pytest.fixture
def pg_engine():
    url = postgres_url()
    if not url:
        require_or_skip("PostgreSQL tests need FHIRIMG_TEST_POSTGRES_URL")
    engine = make_engine(url, pool_size=1)
    yield engine
    engine.dispose()


def backend_pid(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT pg_backend_pid()")).scalar()


def kill_backend(engine, pid: int) -> None:
    admin = make_engine(postgres_url())
    with admin.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


def test_recently_used_connection_is_not_pinged(pg_engine):
    """The trade-off, made visible: no round trip for a connection in use; if the server
    dropped it meanwhile, that one request fails (503 upstream) and the pool recovers."""
    first = backend_pid(pg_engine)
    kill_backend(pg_engine, first)
    with pytest.raises(OperationalError):
        backend_pid(pg_engine)
    assert backend_pid(pg_engine) != first


def test_connection_dropped_while_idle_is_replaced_transparently(pg_engine):
    first = backend_pid(pg_engine)
    kill_backend(pg_engine, first)
    # Pretend the pooled connection has been idle long enough to be checked.
    pool = pg_engine.pool
    record = pool._pool.queue[0]
    record.info["idle_since"] = 0.0
    second = backend_pid(pg_engine)  # no error: the ping failed and the pool reconnected
    assert second != first


# --- session settings ----------------------------------------------------------------------

def test_postgres_sessions_plan_every_execution_and_keep_url_options():
    """Custom plans always (a generic plan costed on an unanalysed table made a conditional
    create's lookup take 10 s), without losing options the URL gives (search_path)."""
    url = postgres_url()
    if not url:
        require_or_skip("PostgreSQL tests need FHIRIMG_TEST_POSTGRES_URL")
    sep = "&" if "?" in url else "?"
    for engine, schema in ((make_engine(f"{url}{sep}options=-csearch_path%3Dsome_schema"), "some_schema"),
                           (make_engine(url, schema="other_schema"), "other_schema")):
        try:
            with engine.connect() as conn:
                assert conn.execute(text("SHOW plan_cache_mode")).scalar() == "force_custom_plan"
                assert conn.execute(text("SHOW search_path")).scalar() == schema
        finally:
            engine.dispose()
