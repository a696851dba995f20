"""The schema fhirimg had before versioned migrations (release c06edf0), frozen here.

A revision is history: it must build the same tables next year, whatever the models say by
then. So these are copies, not imports, of the tables in store/schema.py, search/tables.py,
replicate/schema.py, audit/schema.py, audit/cursors.py, auth/schema.py and
transfer/schema.py as they were at c06edf0, with the audit trail's triggers and its
PostgreSQL append function as literal DDL. Change nothing here: a schema change is a new
revision in versions/. tests/migrations/test_baseline.py checks that this builds exactly
what the models build today, on SQLite and PostgreSQL.

``build_baseline`` is additive and idempotent (missing tables and indexes are created,
triggers and the function replaced): the baseline revision uses it on an empty database,
and adopting a database of that release (adopt.py) uses it to add what a release left
out until a feature first ran (the audit export and forward cursors).
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, LargeBinary, MetaData,
                        PrimaryKeyConstraint, String, Table, Text, UniqueConstraint, inspect)
from sqlalchemy.engine import Connection

REVISION = "0001_baseline"

SEQ = BigInteger().with_variant(Integer, "sqlite")
# search/tables.py: byte-wise ordering on PostgreSQL, so prefix ranges use the index.
VALUE = Text().with_variant(Text(collation="C"), "postgresql")
AUDIT_APPEND_ONLY = ("audit_event", "audit_index", "audit_anchor")
AUDIT_PRUNABLE = {"audit_event": "seq", "audit_index": "seq"}


def baseline_metadata() -> MetaData:
    """Every table of the baseline, on a MetaData of its own (nothing registers it)."""
    md = MetaData()
    for add in (_store_tables, _search_tables, _replication_tables, _audit_tables, _auth_tables,
                _transfer_tables):
        add(md)
    return md


def _store_tables(md: MetaData) -> None:
    Table("resource_version", md,
          Column("seq", SEQ, primary_key=True, autoincrement=False),
          Column("res_type", String(40), nullable=False),
          Column("res_id", String(64), nullable=False),
          Column("version", Integer, nullable=False),
          Column("last_updated_ms", BigInteger, nullable=False),
          Column("method", String(8), nullable=False),
          Column("is_deleted", Boolean, nullable=False),
          Column("content", LargeBinary, nullable=True),
          UniqueConstraint("res_type", "res_id", "version", name="uq_resource_version"),
          Index("ix_resource_version_type_seq", "res_type", "seq"),
          Index("ix_resource_version_updated_seq", "last_updated_ms", "seq"))
    Table("resource_current", md,
          Column("res_type", String(40), nullable=False),
          Column("res_id", String(64), nullable=False),
          Column("version", Integer, nullable=False),
          Column("is_deleted", Boolean, nullable=False),
          Column("last_updated_ms", BigInteger, nullable=False),
          PrimaryKeyConstraint("res_type", "res_id", name="pk_resource_current"),
          Index("ix_resource_current_type_updated", "res_type", "last_updated_ms"))
    Table("change_counter", md,
          Column("id", Integer, primary_key=True, autoincrement=False),
          Column("value", BigInteger, nullable=False),
          Column("last_ms", BigInteger, nullable=False))


def _owner() -> list[Column]:
    return [Column("res_type", String(40), nullable=False), Column("res_id", String(64), nullable=False),
            Column("param", String(64), nullable=False)]


def _search_tables(md: MetaData) -> None:
    Table("search_token", md, *_owner(),
          Column("system", VALUE, nullable=True), Column("code", VALUE, nullable=False),
          Column("text", VALUE, nullable=True),
          Index("ix_search_token_lookup", "res_type", "param", "code", "res_id", "system"),
          Index("ix_search_token_owner", "res_type", "res_id"))
    Table("search_string", md, *_owner(),
          Column("norm", VALUE, nullable=False), Column("exact", VALUE, nullable=False),
          Index("ix_search_string_lookup", "res_type", "param", "norm", "res_id"),
          Index("ix_search_string_owner", "res_type", "res_id"))
    Table("search_reference", md, *_owner(),
          Column("target_type", String(40), nullable=True), Column("target_id", String(64), nullable=True),
          Column("url", VALUE, nullable=True), Column("ident_system", VALUE, nullable=True),
          Column("ident_value", VALUE, nullable=True),
          Index("ix_search_reference_target", "res_type", "param", "target_id", "target_type", "res_id"),
          Index("ix_search_reference_reverse", "target_type", "target_id", "param", "res_type"),
          Index("ix_search_reference_url", "res_type", "param", "url"),
          Index("ix_search_reference_ident", "res_type", "param", "ident_value"),
          Index("ix_search_reference_owner", "res_type", "res_id"))
    date = Table("search_date", md, *_owner(),
                 Column("low_ms", BigInteger, nullable=False), Column("high_ms", BigInteger, nullable=False),
                 Index("ix_search_date_low", "res_type", "param", "low_ms", "res_id"),
                 Index("ix_search_date_high", "res_type", "param", "high_ms", "res_id"),
                 Index("ix_search_date_owner", "res_type", "res_id"))
    Index("ix_search_date_span", date.c.res_type, date.c.param, (date.c.high_ms - date.c.low_ms))
    Table("search_uri", md, *_owner(),
          Column("uri", VALUE, nullable=False),
          Index("ix_search_uri_lookup", "res_type", "param", "uri", "res_id"),
          Index("ix_search_uri_owner", "res_type", "res_id"))
    Table("search_sort", md, *_owner(),
          Column("asc_key", VALUE, nullable=False), Column("desc_key", VALUE, nullable=False),
          Index("ix_search_sort_asc", "res_type", "param", "asc_key", "res_id"),
          Index("ix_search_sort_desc", "res_type", "param", "desc_key", "res_id"),
          Index("ix_search_sort_owner", "res_type", "res_id"))


def _replication_tables(md: MetaData) -> None:
    Table("change_origin", md,
          Column("seq", SEQ, primary_key=True, autoincrement=False),
          Column("origin", String(255), nullable=False), Column("link", String(64), nullable=False))
    Table("site_identity", md,
          Column("id", Integer, primary_key=True, autoincrement=False),
          Column("site_id", String(255), nullable=False))
    Table("replication_link", md,
          Column("name", String(64), primary_key=True), Column("direction", String(8), nullable=False),
          Column("url", String(1024), nullable=False), Column("cursor", Text, nullable=True),
          Column("peer_site", String(255), nullable=True),
          Column("applied", BigInteger, nullable=False, default=0),
          Column("skipped", BigInteger, nullable=False, default=0),
          Column("conflicts", BigInteger, nullable=False, default=0),
          Column("rejected", BigInteger, nullable=False, default=0),
          *[Column(name, BigInteger, nullable=True) for name in ("source_seq", "position_seq", "caught_up_ms",
                                                                  "last_run_ms", "last_success_ms")],
          Column("last_error", Text, nullable=True), Column("last_error_ms", BigInteger, nullable=True))
    Table("replication_applied", md,
          Column("link", String(64), nullable=False), Column("res_type", String(40), nullable=False),
          Column("res_id", String(64), nullable=False), Column("source_version", Integer, nullable=False),
          Column("source_updated_ms", BigInteger, nullable=False), Column("local_version", Integer, nullable=False),
          PrimaryKeyConstraint("link", "res_type", "res_id", name="pk_replication_applied"))
    Table("replication_event", md,
          Column("id", SEQ, primary_key=True, autoincrement=True),
          Column("link", String(64), nullable=False, index=True), Column("kind", String(16), nullable=False),
          Column("res_type", String(40), nullable=True), Column("res_id", String(64), nullable=True),
          Column("source_version", Integer, nullable=True), Column("detail", Text, nullable=False),
          Column("at_ms", BigInteger, nullable=False))


def _audit_tables(md: MetaData) -> None:
    Table("audit_event", md,
          Column("seq", SEQ, primary_key=True, autoincrement=False),
          Column("recorded_ms", BigInteger, nullable=False), Column("patient", String(64), nullable=True),
          Column("event", Text, nullable=False), Column("prev_hash", String(64), nullable=False),
          Column("row_hash", String(64), nullable=False),
          Index("ix_audit_event_patient", "patient", "seq"),
          Index("ix_audit_event_recorded", "recorded_ms", "seq"))
    Table("audit_index", md,
          Column("seq", SEQ, nullable=False), Column("param", String(24), nullable=False),
          Column("system", String(256), nullable=True), Column("value", String(256), nullable=False),
          Index("ix_audit_index_lookup", "param", "value", "seq"),
          Index("ix_audit_index_seq", "seq"))
    Table("audit_head", md,
          Column("id", Integer, primary_key=True, autoincrement=False),
          Column("seq", BigInteger, nullable=False), Column("hash", String(64), nullable=False))
    Table("audit_anchor", md,
          Column("through_seq", BigInteger, primary_key=True, autoincrement=False),
          Column("hash", String(64), nullable=False), Column("pruned_ms", BigInteger, nullable=False))
    Table("audit_export", md,
          Column("through_seq", BigInteger, primary_key=True, autoincrement=False),
          Column("exported_ms", BigInteger, nullable=False), Column("events", BigInteger, nullable=False))
    Table("audit_forward", md,
          Column("target", String(40), primary_key=True),
          Column("forwarded_through_seq", BigInteger, nullable=False, default=0),
          Column("failures", Integer, nullable=False, default=0),
          Column("last_error", Text, nullable=True), Column("last_attempt_ms", BigInteger, nullable=True),
          Column("last_success_ms", BigInteger, nullable=True),
          Column("next_attempt_ms", BigInteger, nullable=False, default=0),
          Column("lease_owner", String(64), nullable=True),
          Column("lease_until_ms", BigInteger, nullable=False, default=0))


def _auth_tables(md: MetaData) -> None:
    Table("auth_client", md,
          Column("client_id", String(128), primary_key=True), Column("name", String(200), nullable=False),
          Column("jwks", Text, nullable=True), Column("jwks_url", String(2000), nullable=True),
          Column("scopes", Text, nullable=False),
          Column("patients", Text, nullable=False, default=""),
          Column("organizations", Text, nullable=False, default=""),
          Column("disabled", Boolean, nullable=False, default=False),
          Column("created_ms", BigInteger, nullable=False), Column("updated_ms", BigInteger, nullable=False))
    Table("auth_client_change", md,
          Column("id", Integer, primary_key=True, autoincrement=True),
          Column("client_id", String(128), nullable=False), Column("action", String(16), nullable=False),
          Column("actor", String(200), nullable=False), Column("at_ms", BigInteger, nullable=False),
          Column("details", Text, nullable=False),
          Index("ix_auth_client_change_client", "client_id", "at_ms"))
    Table("auth_signing_key", md,
          Column("kid", String(64), primary_key=True), Column("alg", String(8), nullable=False),
          Column("private_pem", LargeBinary, nullable=False), Column("public_jwk", Text, nullable=False),
          Column("created_ms", BigInteger, nullable=False))
    Table("auth_assertion_jti", md,
          Column("client_id", String(128), nullable=False), Column("jti", String(256), nullable=False),
          Column("expires_ms", BigInteger, nullable=False),
          PrimaryKeyConstraint("client_id", "jti", name="pk_auth_assertion_jti"),
          Index("ix_auth_assertion_jti_expiry", "expires_ms"))


def _transfer_tables(md: MetaData) -> None:
    Table("dicom_instance", md,
          Column("sop_uid", String(64), primary_key=True),
          *[Column(name, String(64), nullable=False) for name in ("study_uid", "series_uid", "sop_class_uid",
                                                                   "transfer_syntax_uid")],
          Column("instance_number", Integer, nullable=True), Column("size", BigInteger, nullable=False),
          Column("sha256", String(64), nullable=False), Column("path", String(256), nullable=False),
          Column("stored_ms", BigInteger, nullable=False), Column("attributes", LargeBinary, nullable=False),
          Index("ix_dicom_instance_series", "study_uid", "series_uid"))
    Table("active_retrieve", md,
          Column("study_id", String(64), primary_key=True),
          Column("task_id", String(64), nullable=False, unique=True),
          Column("priority", String(16), nullable=False), Column("created_ms", BigInteger, nullable=False),
          Column("heartbeat_ms", BigInteger, nullable=True), Column("enqueued_ms", BigInteger, nullable=True),
          Column("runs", Integer, nullable=False, default=0))
    Table("transfer_cursor", md,
          Column("name", String(40), primary_key=True), Column("seq", BigInteger, nullable=False))


def sqlite_triggers(table: str) -> list[str]:
    """audit/schema.py at c06edf0: UPDATE refused, DELETE refused above the retention anchor."""
    column = AUDIT_PRUNABLE.get(table)
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
    """The same rule on PostgreSQL: a plpgsql trigger function per table."""
    column = AUDIT_PRUNABLE.get(table)
    allow = (f"IF TG_OP = 'DELETE' AND OLD.{column} <= (SELECT COALESCE(MAX(through_seq), 0) FROM audit_anchor) "
             "THEN RETURN OLD; END IF; ") if column else ""
    return [
        f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {allow}RAISE EXCEPTION '{table} is append-only'; END $$",
        f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()",
    ]


# audit/schema.py's POSTGRES_APPEND_FUNCTION at c06edf0, byte for byte (its E'<newline>'
# literals included): the group committer's one-statement append.
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
    last_seq := h_seq;
    head_hash := h_hash;
    RETURN NEXT;
END $$
"""


def build_baseline(conn: Connection) -> list[str]:
    """Bring `conn`'s database up to the baseline, additively; return what was created."""
    md = baseline_metadata()
    present = set(inspect(conn).get_table_names())
    missing = [table for table in md.sorted_tables if table.name not in present]
    md.create_all(conn, tables=missing, checkfirst=False)
    created = [table.name for table in missing] + _create_missing_indexes(conn, md, present)
    _install_audit_ddl(conn)
    _seed_rows(conn, md, created)
    return created


def _create_missing_indexes(conn: Connection, md: MetaData, present: set[str]) -> list[str]:
    """Indexes a table created by an earlier model lacks (create_all never adds them later)."""
    made = []
    have = _index_names(conn)
    for table in md.sorted_tables:
        if table.name not in present:
            continue
        for index in sorted(table.indexes, key=lambda ix: ix.name):
            if index.name not in have:
                index.create(conn)
                made.append(index.name)
    return made


def _index_names(conn: Connection) -> set[str]:
    """Every index name of the schema, from the catalogue (SQLAlchemy's reflection leaves out
    SQLite's expression indexes, such as ix_search_date_span)."""
    if conn.dialect.name == "sqlite":
        query = "SELECT name FROM sqlite_master WHERE type = 'index'"
    else:
        query = "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
    return set(conn.exec_driver_sql(query).scalars())


def _install_audit_ddl(conn: Connection) -> None:
    """The append-only triggers (replaced, so an adopted database gets exactly these) and,
    on PostgreSQL, the append function."""
    is_postgres = conn.dialect.name == "postgresql"
    for table in AUDIT_APPEND_ONLY:
        for statement in (postgres_triggers if is_postgres else sqlite_triggers)(table):
            conn.exec_driver_sql(statement)
    if is_postgres:
        conn.exec_driver_sql(POSTGRES_APPEND_FUNCTION)


def _seed_rows(conn: Connection, md: MetaData, created: list[str]) -> None:
    """The rows the schema starts with: the change counter, and the audit chain's genesis
    head (only with a new audit_head: an existing one holds the chain's real head)."""
    counter = md.tables["change_counter"]
    if conn.execute(counter.select()).first() is None:
        conn.execute(counter.insert().values(id=1, value=0, last_ms=0))
    if "audit_head" in created:
        conn.execute(md.tables["audit_head"].insert().values(id=1, seq=0, hash="0" * 64))
