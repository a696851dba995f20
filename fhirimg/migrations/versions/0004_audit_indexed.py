"""The audit trail's search values may follow its chain: ``audit_indexed`` records how far
``audit_index`` has got (fhirimg/audit/fold.py). SQLite now writes an event's search values
in batches behind the chain; PostgreSQL's append statement writes them as before and moves
``audit_indexed`` with the head.

Every event already in the chain has its search values, so the new row starts at the head.
"""
from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Column, Integer, text

revision = "0004_audit_indexed"
down_revision = "0003_subscriptions"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("audit_indexed",
                    Column("id", Integer, primary_key=True, autoincrement=False),
                    Column("seq", BigInteger, nullable=False))
    op.execute(text("INSERT INTO audit_indexed (id, seq) SELECT 1, seq FROM audit_head WHERE id = 1"))
    if op.get_bind().dialect.name == "postgresql":
        op.get_bind().exec_driver_sql(POSTGRES_APPEND_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # the append before this revision, which knew no audit_indexed
        from fhirimg.migrations.baseline import POSTGRES_APPEND_FUNCTION as BEFORE
        op.get_bind().exec_driver_sql(BEFORE)
    op.drop_table("audit_indexed")


# audit/schema.py's POSTGRES_APPEND_FUNCTION as of this revision, byte for byte: the append
# moves audit_indexed with the head.
POSTGRES_APPEND_FUNCTION = r"""
CREATE OR REPLACE FUNCTION fhirimg_audit_append(events json, search json)
RETURNS TABLE (first_seq bigint, last_seq bigint, head_hash text) LANGUAGE plpgsql AS $$
DECLARE
    h_seq bigint; h_hash text; e record; digest text;
BEGIN
    SELECT h.seq, h.hash INTO h_seq, h_hash FROM audit_head h WHERE h.id = 1 FOR UPDATE;
    first_seq := h_seq + 1;
    FOR e IN SELECT * FROM json_to_recordset(events) AS x(recorded_ms bigint, patient text, event text) LOOP
        h_seq := h_seq + 1;
        digest := encode(sha256(convert_to(h_hash || E'
' || h_seq::text || E'
' || e.event, 'UTF8')), 'hex');
        INSERT INTO audit_event (seq, recorded_ms, patient, event, prev_hash, row_hash)
        VALUES (h_seq, e.recorded_ms, e.patient, e.event, h_hash, digest);
        h_hash := digest;
    END LOOP;
    INSERT INTO audit_index (seq, param, system, value)
    SELECT first_seq - 1 + x.n, x.param, x.system, x.value
    FROM json_to_recordset(search) AS x(n bigint, param text, system text, value text);
    UPDATE audit_head SET seq = h_seq, hash = h_hash WHERE id = 1;
    UPDATE audit_indexed SET seq = h_seq WHERE id = 1;
    last_seq := h_seq;
    head_hash := h_hash;
    RETURN NEXT;
END $$
"""
