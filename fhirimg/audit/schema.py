"""Tables of the audit trail, and the triggers that make them append-only.

``audit_event`` holds the chained events, ``audit_index`` the search values of each (R5
AuditEvent search parameters), ``audit_head`` the chain's last seq and hash, ``audit_indexed``
how far ``audit_index`` has got (it is written behind the chain: audit/fold.py). Rows may be
deleted only at or below the retention anchor (``audit_anchor``), which ``fhirimg audit
prune`` raises in the same transaction, after an export, recording the prune as an event.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, MetaData, String, Table, Text, event

from ..store.schema import register_metadata

metadata = MetaData()
SEQ = BigInteger().with_variant(Integer, "sqlite")

audit_event = Table(
    "audit_event", metadata,
    Column("seq", SEQ, primary_key=True, autoincrement=False),
    Column("recorded_ms", BigInteger, nullable=False),
    Column("patient", String(64), nullable=True),  # the patient the event concerns (BALP: one event each)
    Column("event", Text, nullable=False),  # the AuditEvent, canonical JSON (what row_hash covers)
    Column("prev_hash", String(64), nullable=False),
    Column("row_hash", String(64), nullable=False),
    Index("ix_audit_event_patient", "patient", "seq"),
    Index("ix_audit_event_recorded", "recorded_ms", "seq"),
)

# One row per (event, search parameter, value): tokens and identifiers as (system, value),
# references as (NULL, "Type/id"). Derived from the event (audit/index.py), folded in behind
# the chain (audit/fold.py).
audit_index = Table(
    "audit_index", metadata,
    Column("seq", SEQ, nullable=False),
    Column("param", String(24), nullable=False),
    Column("system", String(256), nullable=True),
    Column("value", String(256), nullable=False),
    Index("ix_audit_index_lookup", "param", "value", "seq"),
    Index("ix_audit_index_seq", "seq"),
)

# One row: the chain's last seq and hash, locked by every appending transaction.
audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

# One row: every event up to seq has its search values in audit_index. They are folded in
# behind the chain (audit/fold.py): written with each event they were most of the cost of
# making a read's event durable, on both databases.
audit_indexed = Table(
    "audit_indexed", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
)

# Append-only too: each prune adds a row; the chain now starts after the highest through_seq,
# linked to its hash (the row_hash of the last event pruned).
audit_anchor = Table(
    "audit_anchor", metadata,
    Column("through_seq", BigInteger, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False),
    Column("pruned_ms", BigInteger, nullable=False),
)

APPEND_ONLY = ("audit_event", "audit_index", "audit_anchor")
# Deleting below the anchor is how a prune removes what it exported; nothing else is deleted.
PRUNABLE = {"audit_event": "seq", "audit_index": "seq"}


def sqlite_triggers(table: str) -> list[str]:
    column = PRUNABLE.get(table)
    above_anchor = f"WHEN OLD.{column} > (SELECT COALESCE(MAX(through_seq), 0) FROM audit_anchor) " if column else ""
    return [
        f"DROP TRIGGER IF EXISTS {table}_no_update",
        f"DROP TRIGGER IF EXISTS {table}_no_delete",
        f"CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END",
        f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} {above_anchor}"
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END",
    ]


def postgres_triggers(table: str) -> list[str]:
    column = PRUNABLE.get(table)
    allow = (f"IF TG_OP = 'DELETE' AND OLD.{column} <= (SELECT COALESCE(MAX(through_seq), 0) FROM audit_anchor) "
             "THEN RETURN OLD; END IF; ") if column else ""
    return [
        f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {allow}RAISE EXCEPTION '{table} is append-only'; END $$",
        f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
    ]


def _append_only(target, connection, **_):
    build = postgres_triggers if connection.dialect.name == "postgresql" else sqlite_triggers
    for statement in build(target.name):
        connection.exec_driver_sql(statement)


for _table in (audit_event, audit_index, audit_anchor):
    event.listen(_table, "after_create", _append_only)


# PostgreSQL: lock the head, chain and insert the events, move the head - one statement, so
# that the group committer's autocommit connection records a group in one round trip (a
# read's event cost three before: lock, insert, commit). The hash is the one chain.row_hash
# computes: SHA-256 of prev_hash, "\n", seq, "\n", the event's UTF-8. The search values
# follow behind the chain, as on SQLite (audit/fold.py).
POSTGRES_APPEND_FUNCTION = r"""
CREATE OR REPLACE FUNCTION fhirimg_audit_append(events json)
RETURNS TABLE (first_seq bigint, last_seq bigint, head_hash text) LANGUAGE plpgsql AS $$
DECLARE
    h_seq bigint; h_hash text; e record; digest text;
BEGIN
    SELECT h.seq, h.hash INTO h_seq, h_hash FROM audit_head h WHERE h.id = 1 FOR UPDATE;
    first_seq := h_seq + 1;
    FOR e IN SELECT * FROM json_to_recordset(events) AS x(recorded_ms bigint, patient text, event text) LOOP
        h_seq := h_seq + 1;
        digest := encode(sha256(convert_to(h_hash || E'\n' || h_seq::text || E'\n' || e.event, 'UTF8')), 'hex');
        INSERT INTO audit_event (seq, recorded_ms, patient, event, prev_hash, row_hash)
        VALUES (h_seq, e.recorded_ms, e.patient, e.event, h_hash, digest);
        h_hash := digest;
    END LOOP;
    UPDATE audit_head SET seq = h_seq, hash = h_hash WHERE id = 1;
    last_seq := h_seq;
    head_hash := h_hash;
    RETURN NEXT;
END $$
"""


@event.listens_for(audit_head, "after_create")
def _genesis(target, connection, **_):
    # The head row exists before the first append: appenders lock it (a SELECT ... FOR UPDATE
    # of a missing row locks nothing, and two first appends would both take seq 1).
    connection.execute(target.insert().values(id=1, seq=0, hash="0" * 64))
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(POSTGRES_APPEND_FUNCTION)


@event.listens_for(audit_indexed, "after_create")
def _nothing_indexed(target, connection, **_):
    connection.execute(target.insert().values(id=1, seq=0))


register_metadata(metadata)
