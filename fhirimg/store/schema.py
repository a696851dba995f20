"""Tables: every version of every resource, the current version of each, and the change counter.

``resource_version.seq`` is the global change sequence (Blaze's "t"): strictly increasing
in commit order, because it is taken from ``change_counter`` under that row's lock at
the very end of each write transaction (see UnitOfWork.commit). History, paging and
replication all walk this sequence.
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, LargeBinary, MetaData,
                        PrimaryKeyConstraint, String, Table, UniqueConstraint)

metadata = MetaData()

# Other subsystems (search indexes, transfer, replication) define their tables on their own
# MetaData and register it here so create_schema builds them all.
_extra_metadata: list[MetaData] = []

resource_version = Table(
    "resource_version", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("res_type", String(40), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated_ms", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),  # POST, PUT, PATCH, DELETE (http.html#history)
    Column("is_deleted", Boolean, nullable=False),
    Column("content", LargeBinary, nullable=True),  # the resource JSON (UTF-8), NULL for a delete
    UniqueConstraint("res_type", "res_id", "version", name="uq_resource_version"),
    Index("ix_resource_version_type_seq", "res_type", "seq"),
    # history _since/_at: lastUpdated never decreases along seq, so one probe turns an
    # instant into a seq bound (fhirimg/history.py).
    Index("ix_resource_version_updated_seq", "last_updated_ms", "seq"),
)

resource_current = Table(
    "resource_current", metadata,
    Column("res_type", String(40), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("is_deleted", Boolean, nullable=False),
    Column("last_updated_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("res_type", "res_id", name="pk_resource_current"),
    Index("ix_resource_current_type_updated", "res_type", "last_updated_ms"),
)

change_counter = Table(
    "change_counter", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("value", BigInteger, nullable=False),
    Column("last_ms", BigInteger, nullable=False),  # keeps lastUpdated monotonic with seq
)


def register_metadata(extra: MetaData) -> None:
    if extra not in _extra_metadata:
        _extra_metadata.append(extra)


def create_schema(engine) -> None:
    """Create all tables (idempotent) and the single change-counter row."""
    from .. import search  # noqa: F401  (registers the index tables)
    from ..replicate import schema as _replication  # noqa: F401  (change origins, link cursors)
    from ..audit import schema as _audit  # noqa: F401  (the audit trail: every write has its event)
    from .engine import WRITE_OPTION
    # Several processes start on a fresh database at once (gunicorn workers, `fhirimg run`'s
    # server and worker): each would see a table missing and all but one would fail with
    # "already exists". One write transaction, serialised by SQLite's write lock or a
    # PostgreSQL advisory lock, makes creation happen once and the others see it done.
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn:
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7262436)")
            metadata.create_all(conn)
            for extra in _extra_metadata:
                extra.create_all(conn)
            if conn.execute(change_counter.select()).first() is None:
                conn.execute(change_counter.insert().values(id=1, value=0, last_ms=0))
