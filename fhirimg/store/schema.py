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

# Other subsystems (search indexes, transfer, replication, audit, auth) define their tables on
# their own MetaData and register it here; fhirimg.migrations.tables imports them all.
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


def registered_metadata() -> list[MetaData]:
    """The store's MetaData, then those registered by the capabilities imported so far."""
    return [metadata, *_extra_metadata]


def create_schema(engine) -> None:
    """Make sure the database holds this fhirimg's schema before anything uses it.

    A new database is created and stamped at the newest migration; an older, unversioned
    or newer schema raises fhirimg.migrations.SchemaError with one line saying what to do.
    The versioning lives in fhirimg.migrations (it knows every capability's tables, which
    the store must not import); every entry point still calls this name.
    """
    from ..migrations import ensure_schema
    ensure_schema(engine)
