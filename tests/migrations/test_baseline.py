"""The baseline revision, the models and an adopted release database are one schema:
tables, columns, types, indexes, constraints, triggers and functions, on both databases."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

import fhirimg
from fhirimg.migrations import PACKAGED, upgrade_schema
from fhirimg.migrations.lock import schema_lock
from fhirimg.store import create_schema

from .fingerprint import differences, schema_fingerprint


def run_revisions_from_nothing(engine) -> None:
    """The revision chain itself on an empty database (what a new database skips)."""
    with schema_lock(engine) as conn:
        command.upgrade(PACKAGED.config(conn), "head")


def test_the_revisions_build_what_the_models_build(bare_engine, other_engine):
    create_schema(bare_engine)
    run_revisions_from_nothing(other_engine)
    assert differences(schema_fingerprint(bare_engine), schema_fingerprint(other_engine)) == []


def test_the_fingerprint_sees_triggers_and_functions(bare_engine):
    create_schema(bare_engine)
    found = schema_fingerprint(bare_engine)
    if bare_engine.dialect.name == "sqlite":
        assert {"trigger audit_event_no_update", "trigger audit_anchor_no_delete"} <= set(found)
    else:
        assert {"trigger audit_event_append_only", "function fhirimg_audit_append"} <= set(found)


def test_the_baseline_revision_seeds_the_counter_and_the_chain(bare_engine):
    run_revisions_from_nothing(bare_engine)
    with bare_engine.connect() as conn:
        assert conn.execute(text("SELECT id, value, last_ms FROM change_counter")).all() == [(1, 0, 0)]
        assert conn.execute(text("SELECT id, seq, hash FROM audit_head")).all() == [(1, 0, "0" * 64)]
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [PACKAGED.head]


def test_an_adopted_release_database_has_the_schema_of_a_new_one(release_engine, other_engine):
    upgrade_schema(release_engine)
    create_schema(other_engine)
    assert differences(schema_fingerprint(release_engine), schema_fingerprint(other_engine)) == []


def test_every_module_that_registers_tables_is_imported_for_a_new_database():
    """A capability's tables reach a new database only if migrations/tables.py imports them."""
    root = Path(fhirimg.__file__).parent
    registering = sorted("fhirimg." + ".".join(path.relative_to(root).with_suffix("").parts)
                         for path in root.rglob("*.py")
                         if re.search(r"^register_metadata\(\w+\)", path.read_text(), re.MULTILINE))
    assert len(registering) >= 6
    imported = subprocess.run(
        [sys.executable, "-c", "import sys; from fhirimg.migrations.tables import all_metadata; all_metadata(); "
         "print('\\n'.join(sys.modules))"], check=True, capture_output=True, text=True).stdout.split()
    assert [name for name in registering if name not in imported] == []


@pytest.mark.parametrize("backend", ["postgres"])
def test_going_back_before_0005_folds_what_waits_and_appends_as_0004_did(bare_engine):
    """0005 leaves PostgreSQL's search values to the fold; its downgrade writes those still
    waiting (0004's append moves the watermark with the head, so they would never be
    found), and 0004's append writes them itself again. Up again, the fold takes over."""
    from fhirimg.audit.chain import append_events
    from fhirimg.audit.events import Actor, event_rows
    from fhirimg.audit.fold import backlog
    from fhirimg.store.engine import WRITE_OPTION

    def append(count):
        actor = Actor("client-a", "site-1")
        with bare_engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            for n in range(count):
                append_events(conn, event_rows(actor.act("read", 1_700_000_000_000 + n,
                                                         resources=[f"ImagingStudy/s{n}"]), [None]))

    def state():
        with bare_engine.connect() as conn:
            return backlog(conn), conn.execute(text("SELECT count(DISTINCT seq) FROM audit_index")).scalar()

    run_revisions_from_nothing(bare_engine)
    append(7)
    assert state() == (7, 0)
    with schema_lock(bare_engine) as conn:
        command.downgrade(PACKAGED.config(conn), "0004_audit_indexed")
    assert state() == (0, 7)
    with bare_engine.connect() as conn, conn.begin():  # 0004's two-argument append, search values included
        conn.execute(text("SELECT fhirimg_audit_append(CAST(:e AS json), CAST('[]' AS json))"),
                     {"e": '[{"recorded_ms": 1, "patient": null, "event": "{}"}]'})
    assert state() == (0, 7)  # its watermark moved with the head
    with schema_lock(bare_engine) as conn:
        command.upgrade(PACKAGED.config(conn), "head")
    append(2)
    assert state() == (2, 7)
