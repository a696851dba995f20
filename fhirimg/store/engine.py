"""Engine creation for SQLite (WAL, immediate write transactions) and PostgreSQL (psycopg 3)."""
from __future__ import annotations

import threading
import time
import weakref
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError

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


def use_wal(cur, timeout: float = 60.0) -> None:
    """Put the database in WAL mode (kept in the file: later connections find it so).

    Switching needs the database to itself, and SQLite answers "database is locked" at once
    rather than through the busy handler when another connection is using it: processes
    starting together on a new database met that 4 times in 60 tries. So look first, and
    retry the switch for as long as the busy timeout."""
    import sqlite3
    import time as _time
    deadline = _time.monotonic() + timeout
    delay = 0.005
    while True:
        try:
            if cur.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or _time.monotonic() > deadline:
                raise
            _time.sleep(delay)
            delay = min(delay * 2, 0.2)


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
        use_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    gate = GATES[engine] = WriterGate(engine)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        # A write transaction takes the write lock at BEGIN: two deferred transactions that
        # both read then write would otherwise deadlock into SQLITE_BUSY.
        if conn.get_execution_options().get(WRITE_OPTION):
            gate.enter(conn.connection.dbapi_connection)
            try:
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                gate.leave(conn.connection.dbapi_connection)
                raise
        else:
            conn.exec_driver_sql("BEGIN")

    return engine


GATES: "weakref.WeakKeyDictionary[Engine, WriterGate]" = weakref.WeakKeyDictionary()


def writer_gate(engine: Engine) -> "WriterGate":
    """The gate of an SQLite engine, for a writer that begins and commits on the driver's
    connection itself (the audit committer) and so must enter and leave it by hand."""
    return GATES[engine]


class WriterGate:
    """Writers of one process queue on a lock before SQLite's write lock.

    SQLite makes a blocked writer poll with sleeps that grow to 100 ms, and whoever polls at
    the right moment wins. Threads of one process now wait on a lock instead and enter as
    soon as the previous writer commits (bench ingest's raw store, 8 threads in one process:
    p99 1 353 ms -> 245 ms). Processes still meet in SQLite's busy handler: with 4 gunicorn
    workers bench crud's create p99 stays ~650 ms; use PostgreSQL for many server processes.
    The lock is released after the DBAPI commit or rollback (from whichever thread ends the
    transaction). A nested write transaction of the holding thread, or a wait
    longer than the busy timeout, goes straight to SQLite as before: the gate only orders
    writers, it never adds a way to deadlock.
    """

    def __init__(self, engine: Engine, timeout: float = 60.0):
        self.lock = threading.Lock()
        self.timeout = timeout
        self.owner: int | None = None   # thread holding the gate
        self.holder: int | None = None  # id() of its DBAPI connection
        dialect = engine.dialect
        commit, rollback = dialect.do_commit, dialect.do_rollback

        def do_commit(dbapi_conn):
            try:
                commit(dbapi_conn)
            finally:
                self.leave(dbapi_conn)

        def do_rollback(dbapi_conn):
            try:
                rollback(dbapi_conn)
            finally:
                self.leave(dbapi_conn)

        dialect.do_commit, dialect.do_rollback = do_commit, do_rollback

    @staticmethod
    def key(conn) -> int:
        """The sqlite3 connection's id, whether given it or the pool's proxy of it."""
        return id(getattr(conn, "dbapi_connection", conn))

    def enter(self, conn) -> None:
        me = threading.get_ident()
        if self.owner == me or not self.lock.acquire(timeout=self.timeout):
            return
        self.owner, self.holder = me, self.key(conn)

    def leave(self, conn) -> None:
        if self.holder is not None and self.holder == self.key(conn):
            self.owner = self.holder = None
            self.lock.release()


def _postgres_engine(url, schema: str | None, echo: bool, pool_size: int) -> Engine:
    url = url.set(drivername="postgresql+psycopg")
    # Custom plans always: psycopg prepares a statement after 5 executions, and PostgreSQL
    # then switches to a generic plan costed without the parameter values. On a young or
    # unanalysed database (autovacuum off, bulk load) that plan was a nested loop over
    # whole tables: a conditional create's identifier lookup took 10 s at 3 000 resources
    # (bench ingest: 4 studies/s). Planning each execution costs ~0.1-0.3 ms.
    # Options given in the URL (?options=-csearch_path=x) are kept: connect_args replaces them.
    options = [o for o in [url.query.get("options")] if isinstance(o, str)]
    options.append("-cplan_cache_mode=force_custom_plan")
    if schema:
        options.append(f"-csearch_path={schema}")
    connect_args = {"options": " ".join(options)}
    if "connect_timeout" not in url.query:  # libpq waits for ever for a host that drops packets
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    engine = create_engine(url, echo=echo, connect_args=connect_args, pool_size=pool_size,
                           max_overflow=pool_size * 2)
    ping_after_idle(engine)
    return engine


CONNECT_TIMEOUT_SECONDS = 10

# A pooled connection unused for this long is checked before use (the server may have
# restarted or a firewall dropped it); a busy one is not.
IDLE_PING_SECONDS = 10.0


def ping_after_idle(engine: Engine, idle_seconds: float = IDLE_PING_SECONDS) -> None:
    """Pessimistic disconnect handling for idle connections only.

    SQLAlchemy's pool_pre_ping costs one round trip on every checkout, i.e. on every
    request (0.3-0.8 ms measured here, against ~1 ms for a whole read); connections in
    steady use have just proved that they work. A failed ping raises DisconnectionError,
    on which the pool replaces the connection and retries, as pre-ping does.
    """
    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_conn, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_conn, record):
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_conn, record, _proxy):
        if time.monotonic() - record.info.get("idle_since", 0.0) < idle_seconds:
            return
        try:
            cursor = dbapi_conn.cursor()
            cursor.execute("SELECT 1")
            cursor.close()
            dbapi_conn.rollback()  # leave no implicit transaction open (psycopg is not autocommit)
        except Exception as exc:  # noqa: BLE001 - any failure means: use another connection
            raise DisconnectionError(f"pooled connection is unusable: {exc}") from exc


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"
