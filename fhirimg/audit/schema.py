"""Tables of the audit trail, and the triggers that make ``audit_event`` append-only."""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text, event

from ..store.schema import register_metadata

metadata = MetaData()

audit_event = Table(
    "audit_event", metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("recorded_ms", BigInteger, nullable=False),
    Column("patient", String(64), nullable=True),  # the patient the event concerns (BALP: one event each)
    Column("event", Text, nullable=False),  # the AuditEvent, canonical JSON (what row_hash covers)
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    Index("ix_audit_event_patient", "patient", "seq"),
)

# One row: the chain's last seq and hash, locked by every appending transaction.
audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS audit_event_no_update BEFORE UPDATE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_event_no_delete BEFORE DELETE ON audit_event "
    "BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END",
]
POSTGRES_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION fhirimg_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit_event is append-only'; END $$",
    "DROP TRIGGER IF EXISTS audit_event_append_only ON audit_event",
    "CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event "
    "FOR EACH ROW EXECUTE FUNCTION fhirimg_audit_append_only()",
]


@event.listens_for(audit_event, "after_create")
def _append_only(target, connection, **_):
    statements = POSTGRES_TRIGGERS if connection.dialect.name == "postgresql" else SQLITE_TRIGGERS
    for statement in statements:
        connection.exec_driver_sql(statement)


@event.listens_for(audit_head, "after_create")
def _genesis(target, connection, **_):
    # The head row exists before the first append: appenders lock it (a SELECT ... FOR UPDATE
    # of a missing row locks nothing, and two first appends would both take seq 1).
    connection.execute(target.insert().values(id=1, seq=0, hash="0" * 64))


register_metadata(metadata)
