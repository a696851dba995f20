"""Engine creation for SQLite (WAL, immediate write transactions) and PostgreSQL (psycopg 3)."""
from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

WRITE_OPTION = "fhirimg_write"


def make_engine(url: str, schema: str | None = None, echo: bool = False, pool_size: int = 8) -> Engine:
    """Create the engine for a database URL; `schema` isolates PostgreSQL test runs.
    `pool_size` is per process (config db_pool_size); overflow allows twice as many more."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, echo, pool_size)
    if parsed.get_backend_name() == "postgresql":
        return _postgres_engine(parsed, schema, echo, pool_size)
    raise ValueError(f"unsupported database URL {parsed.render_as_string(hide_password=True)}: "
                     "use sqlite:///path or postgresql://user@host/db")


def _sqlite_engine(url, echo: bool, pool_size: int) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 60},
                           pool_size=pool_size, max_overflow=pool_size * 2)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" event decide how transactions start (pysqlite otherwise
        # begins lazily and never takes the write lock up front).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # A write transaction takes the write lock at BEGIN: two deferred transactions that
        # both read then write would otherwise deadlock into SQLITE_BUSY.
        immediate = conn.get_execution_options().get(WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _postgres_engine(url, schema: str | None, echo: bool, pool_size: int) -> Engine:
    url = url.set(drivername="postgresql+psycopg")
    connect_args = {}
    if schema:
        connect_args["options"] = f"-csearch_path={schema}"
    return create_engine(url, echo=echo, connect_args=connect_args, pool_size=pool_size,
                         max_overflow=pool_size * 2, pool_pre_ping=True)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
