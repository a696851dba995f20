"""Tables that say how far the audit trail has been copied out: by export, and per forward target.

``audit_export`` is append-only in spirit: each export that moved the watermark adds a row,
and the watermark is the highest ``through_seq`` (every event up to it, from the chain's
start, was in some export). ``fhirimg audit prune`` never removes an event above it.

``audit_forward`` is the outbox cursor of each forward target: the events after
``forwarded_through_seq`` are still to be sent. A round takes the row's lease
(``lease_owner``/``lease_until_ms``) so two workers never send the same batch at once, and
advances the cursor with a compare-and-set on its old value.

Imported by retention.py and forward.py so that ``create_schema`` creates them wherever
those are used.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, MetaData, String, Table, Text, func, select

from ..store.schema import register_metadata

metadata = MetaData()

audit_export = Table(
    "audit_export", metadata,
    Column("through_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("exported_ms", BigInteger, nullable=False),
    Column("events", BigInteger, nullable=False),  # how many events that export wrote
)

audit_forward = Table(
    "audit_forward", metadata,
    Column("target", String(40), primary_key=True),
    Column("forwarded_through_seq", BigInteger, nullable=False, default=0),
    Column("failures", Integer, nullable=False, default=0),  # consecutive, reset by a success
    Column("last_error", Text, nullable=True),
    Column("last_attempt_ms", BigInteger, nullable=True),
    Column("last_success_ms", BigInteger, nullable=True),
    Column("next_attempt_ms", BigInteger, nullable=False, default=0),  # back-off: not before this
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until_ms", BigInteger, nullable=False, default=0),
)


def export_watermark(conn) -> int:
    """The highest seq exported contiguously from the chain's start (0: nothing exported)."""
    return conn.execute(select(func.coalesce(func.max(audit_export.c.through_seq), 0))).scalar_one()


register_metadata(metadata)
