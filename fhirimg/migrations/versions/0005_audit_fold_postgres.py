"""PostgreSQL's audit append no longer writes the events' search values: they are folded in
behind the chain there too (fhirimg/audit/fold.py), after the response, by the server that
appended them. The append function takes the events alone (one argument), and leaves
``audit_indexed`` to the fold.

Nothing moves on SQLite. Every event already in the chain has its search values (the old
append wrote them), so the watermark stays where it is.
"""
from __future__ import annotations

from importlib import import_module

from alembic import op

revision = "0005_audit_fold_postgres"
down_revision = "0004_audit_indexed"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        bind.exec_driver_sql("DROP FUNCTION fhirimg_audit_append(json, json)")
        bind.exec_driver_sql(POSTGRES_APPEND_FUNCTION)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # The append before this revision moves the watermark with the head: everything waiting
    # is folded in first, or those events would never be found by a search. The head is
    # locked first (as a prune does), so that no server still running appends behind the fold.
    from fhirimg.audit.fold import fold
    bind.exec_driver_sql("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE")
    while fold(bind, 5000):
        pass
    bind.exec_driver_sql("DROP FUNCTION fhirimg_audit_append(json)")
    before = import_module("fhirimg.migrations.versions.0004_audit_indexed")
    bind.exec_driver_sql(before.POSTGRES_APPEND_FUNCTION)


# audit/schema.py's POSTGRES_APPEND_FUNCTION as of this revision, byte for byte.
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
