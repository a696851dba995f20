"""The audit trail's storage: append-only by trigger, hash-chained in commit order, and a
verify that names the first row changed or removed behind the triggers' back."""
from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from fhirimg.audit import schema as _tables  # noqa: F401  (registers the audit tables)
from fhirimg.audit.chain import append_events, verify_chain
from fhirimg.store import create_schema
from fhirimg.store.engine import WRITE_OPTION


@pytest.fixture
def audited(engine):
    create_schema(engine)  # with the audit tables and their triggers
    return engine


def event(n: int) -> dict:
    return {"resourceType": "AuditEvent", "code": {"text": f"event {n}"}, "recorded": "2026-12-04T10:00:00Z",
            "agent": [{"who": {"display": "tests \u00e9"}}], "n": n}


def append(engine, first: int, count: int):
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        return append_events(conn, [(event(first + i), "A" if i % 2 else None, 1000 + i) for i in range(count)])


def verdict(engine):
    with engine.connect() as conn:
        return verify_chain(conn)


def test_appended_events_verify_with_their_count_and_head(audited):
    first = append(audited, 1, 5)
    second = append(audited, 6, 3)
    assert (first.first_seq, second.last_seq) == (1, 8)
    result = verdict(audited)
    assert result.ok and result.count == 8 and result.head_hash == second.head_hash


@pytest.mark.parametrize("statement", ["UPDATE audit_event SET event = '{}' WHERE seq = 2",
                                       "DELETE FROM audit_event WHERE seq = 2"])
def test_audit_rows_cannot_be_updated_or_deleted(audited, statement):
    append(audited, 1, 3)
    with pytest.raises(DBAPIError, match="append-only"):
        with audited.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            conn.execute(text(statement))
    assert verdict(audited).ok


def bypass_triggers(conn) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("ALTER TABLE audit_event DISABLE TRIGGER USER"))
    else:
        conn.execute(text("DROP TRIGGER audit_event_no_update"))
        conn.execute(text("DROP TRIGGER audit_event_no_delete"))


def tamper(engine, statement: str) -> None:
    """What a database superuser could do: triggers off, then change the table."""
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        bypass_triggers(conn)
        conn.execute(text(statement))


def test_a_changed_row_is_reported_at_exactly_that_row(audited):
    append(audited, 1, 6)
    tamper(audited, "UPDATE audit_event SET event = replace(event, 'event 3', 'event 9') WHERE seq = 3")
    result = verdict(audited)
    assert not result.ok and result.broken_at == 3 and result.count == 2 and "content" in result.reason


def test_a_deleted_row_is_reported_at_exactly_that_row(audited):
    append(audited, 1, 6)
    tamper(audited, "DELETE FROM audit_event WHERE seq = 4")
    result = verdict(audited)
    assert not result.ok and result.broken_at == 4 and "missing" in result.reason


def test_a_deleted_tail_is_reported_by_the_head(audited):
    append(audited, 1, 4)
    tamper(audited, "DELETE FROM audit_event WHERE seq = 4")
    result = verdict(audited)
    assert not result.ok and result.broken_at == 4


def test_concurrent_appenders_chain_in_commit_order(audited):
    errors = []

    def appender(k: int):
        try:
            for i in range(10):
                append(audited, k * 100 + i * 3, 3)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=appender, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    result = verdict(audited)
    assert result.ok and result.count == 4 * 10 * 3


def test_fhirimg_audit_verify_says_ok_or_names_the_row(tmp_path):
    from fhirimg.cli import main
    from fhirimg.store import make_engine
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    engine = make_engine(url)
    create_schema(engine)
    append(engine, 1, 2)
    result = CliRunner().invoke(main, ["audit", "verify"], env={"FHIRIMG_DATABASE_URL": url})
    assert result.exit_code == 0 and result.output.startswith("OK: 2 audit events")
    tamper(engine, "UPDATE audit_event SET event = '{}' WHERE seq = 1")
    broken = CliRunner().invoke(main, ["audit", "verify"], env={"FHIRIMG_DATABASE_URL": url})
    assert broken.exit_code == 1 and "BROKEN at seq 1" in broken.output
