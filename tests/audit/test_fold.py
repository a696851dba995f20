"""Search values written behind the chain (audit/fold.py): an event's search values are folded
into audit_index after its commit, never lost, never twice, always there before a search. On
SQLite an appender folds; on PostgreSQL the committer's process does, after a response."""
from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text

from fhirimg.audit import schema as _tables  # noqa: F401  (registers the audit tables)
from fhirimg.audit.chain import append_events
from fhirimg.audit.committer import GroupCommitter
from fhirimg.audit.events import Actor, event_rows
from fhirimg.audit.fold import FOLD_AT, backlog, catch_up, fold
from fhirimg.audit.index import index_values
from fhirimg.store import create_schema
from fhirimg.store.engine import WRITE_OPTION


@pytest.fixture
def audited(engine):
    create_schema(engine)
    return engine


def reads(count: int, start: int = 0) -> list:
    actor = Actor("client-a", "site-1", network="127.0.0.1", token_id="t1")
    rows = []
    for n in range(start, start + count):
        act = actor.act("read", 1_700_000_000_000 + n, resources=[f"ImagingStudy/s{n}"],
                        details={"StudyInstanceUID": f"1.2.3.{n}"})
        rows += event_rows(act, [f"p{n % 7}"])
    return rows


def expected_index(rows) -> int:
    return sum(len(index_values(event)) for event, _, _ in rows)


def counts(engine) -> tuple[int, int, int]:
    """(index rows, watermark, head)."""
    with engine.connect() as conn:
        return (conn.execute(text("SELECT count(*) FROM audit_index")).scalar(),
                conn.execute(text("SELECT seq FROM audit_indexed WHERE id = 1")).scalar(),
                conn.execute(text("SELECT seq FROM audit_head WHERE id = 1")).scalar())


def test_search_values_are_complete_after_catch_up_and_never_repeated(audited):
    rows = reads(150)
    gc = GroupCommitter(audited)
    for row in rows:
        gc.record([row])
    index, watermark, head = counts(audited)
    if audited.dialect.name == "postgresql":  # nothing folded until a response has gone out
        assert (index, watermark, head) == (0, 0, 150) and gc.since_fold == 150
        assert gc.fold_if_due() == 150 and gc.since_fold == 0
        assert counts(audited) == (expected_index(rows), 150, 150)
        assert gc.fold_if_due() == 0 and catch_up(audited) == 0
        return
    assert head == 150 and 150 - FOLD_AT < watermark < 150  # the appenders folded, in batches
    assert index == expected_index(rows[:watermark])
    assert catch_up(audited, batch=64) == 150 - watermark
    assert counts(audited) == (expected_index(rows), 150, 150)
    assert catch_up(audited) == 0 and counts(audited)[0] == expected_index(rows)


SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])  # appenders fold there (PostgreSQL: below)
POSTGRES_ONLY = pytest.mark.parametrize("backend", ["postgres"])


@SQLITE_ONLY
def test_appenders_keep_fewer_than_fold_at_events_waiting(audited):
    """No thread and no search needed: one appender in FOLD_AT folds what waits."""
    gc = GroupCommitter(audited)
    rows = reads(3 * FOLD_AT + 5)
    waiting, folds = [], 0
    for row in rows:
        gc.record([row])
        with audited.connect() as conn:
            waiting.append(backlog(conn))
        folds += len(waiting) > 1 and waiting[-1] < waiting[-2]
    assert max(waiting) == FOLD_AT - 1 and folds == 3
    index, watermark, _ = counts(audited)
    assert index == expected_index(rows[:watermark])


def test_writes_appended_outside_the_committer_are_folded_too(audited):
    rows = reads(30)
    with audited.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, rows)
    catch_up(audited)
    assert counts(audited) == (expected_index(rows), 30, 30)


def test_folders_racing_each_other_write_each_value_once(audited):
    rows = reads(600)
    with audited.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, rows)
    errors = []

    def run():
        try:
            catch_up(audited, batch=25)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert counts(audited) == (expected_index(rows), 600, 600)
    with audited.connect() as conn:
        repeated = conn.execute(text("SELECT seq, param, value, count(*) FROM audit_index "
                                     "GROUP BY seq, param, system, value HAVING count(*) > 1")).all()
    assert repeated == []


def test_a_fold_that_fails_leaves_neither_rows_nor_a_moved_watermark(audited):
    with audited.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, reads(40))

    class Crash(Exception):
        pass

    with pytest.raises(Crash):
        with audited.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            assert fold(conn, 64) == 40
            raise Crash()
    assert counts(audited) == (0, 0, 40)
    with audited.connect() as conn:
        assert backlog(conn) == 40


def test_a_search_finds_an_event_recorded_just_before_it(client, engine):
    """Through the API: the read's event is searchable by the very next request (on SQLite
    before any fold thread could have run)."""
    created = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [{"family": "Fold"}]})
    assert created.status_code == 201, created.get_data(as_text=True)
    pid = created.get_json()["id"]
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    found = client.get(f"/fhir/AuditEvent?patient={pid}&code=read")
    assert found.status_code == 200, found.get_data(as_text=True)
    codes = [e["resource"]["code"]["coding"][0]["code"] for e in found.get_json().get("entry", [])]
    assert codes == ["read"]
    with engine.connect() as conn:
        assert backlog(conn) <= 2  # at most this search's own events wait


def test_audit_status_says_how_many_events_wait_for_their_search_values(audited, config):
    from fhirimg.audit.status import audit_status
    with audited.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, reads(12))
    status = audit_status(audited, config)
    assert status.search_backlog == 12 and "12 events still to be folded in" in status.describe()
    catch_up(audited)
    status = audit_status(audited, config)
    assert status.search_backlog == 0 and "search values: up to date" in status.describe()
    assert status.to_json()["search_backlog"] == 0


def test_verify_names_the_first_event_a_moved_watermark_hides_from_search(audited):
    """The watermark is the one row of the trail that is updated: moving it by hand past
    events without search values would hide them from every search; verify says so."""
    from fhirimg.audit.chain import verify_chain
    rows = reads(20)
    with audited.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, rows[:5])
    catch_up(audited)
    with audited.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        append_events(conn, rows[5:])
    with audited.connect() as conn:
        assert verify_chain(conn).ok
    with audited.begin() as conn:
        conn.execute(text("UPDATE audit_indexed SET seq = 20 WHERE id = 1"))
    with audited.connect() as conn:
        verdict = verify_chain(conn)
    assert not verdict.ok and verdict.broken_at == 6 and "search" in verdict.reason


@SQLITE_ONLY
def test_an_event_whose_values_cannot_be_folded_does_not_fail_the_requests_after_it(audited, monkeypatch, caplog):
    import fhirimg.audit.fold as fold_module
    gc = GroupCommitter(audited)
    rows = reads(FOLD_AT + 10)
    for row in rows[:FOLD_AT - 1]:
        gc.record([row])

    def broken(event):
        raise ValueError("a value the index cannot hold")
    monkeypatch.setattr(fold_module, "index_values", broken)
    for row in rows[FOLD_AT - 1:]:
        gc.record([row])  # each of these tries to fold, fails inside its savepoint, and commits its own event
    index, watermark, head = counts(audited)
    assert (index, watermark, head) == (0, 0, FOLD_AT + 10)
    assert "not folded in" in caplog.text
    monkeypatch.undo()
    assert catch_up(audited) == FOLD_AT + 10 and counts(audited)[0] == expected_index(rows)


def test_a_search_by_date_alone_does_not_fold(client, engine):
    """Only a condition on audit_index needs the values folded in first (a write lock)."""
    assert client.get("/fhir/Patient?_count=1").status_code == 200
    with engine.connect() as conn:
        waiting = backlog(conn)
    assert waiting >= 1
    assert client.get("/fhir/AuditEvent?date=ge2000-01-01").status_code == 200
    with engine.connect() as conn:
        assert backlog(conn) >= waiting  # nothing folded (and this search's own event waits too)
    assert client.get("/fhir/AuditEvent?code=search-type").status_code == 200
    with engine.connect() as conn:
        assert backlog(conn) <= 1  # folded up to the search (its own event is after it)


@POSTGRES_ONLY
def test_a_server_folds_what_it_appended_once_its_answers_are_out(client, engine):
    """PostgreSQL: no appender folds (it holds the chain head); the process folds after a
    response once it has appended FOLD_AT events, its reads and its writes alike."""
    created = client.post("/fhir/Patient", json={"resourceType": "Patient"})
    pid = created.get_json()["id"]
    seen = []
    for _ in range(FOLD_AT + 20):
        answer = client.get(f"/fhir/Patient/{pid}")
        assert answer.status_code == 200
        answer.close()  # what the WSGI server does once the body is out
        with engine.connect() as conn:
            seen.append(backlog(conn))
    assert max(seen) <= FOLD_AT + 1  # the token request, the create and FOLD_AT - 1 reads at most
    assert min(seen[FOLD_AT - 5:]) < 5  # and folded, without a search


@POSTGRES_ONLY
def test_a_fold_after_a_response_that_fails_is_logged_and_retried(audited, monkeypatch, caplog):
    import fhirimg.audit.fold as fold_module
    gc = GroupCommitter(audited)
    rows = reads(FOLD_AT + 10)
    monkeypatch.setattr(fold_module, "index_values", lambda event: 1 / 0)
    for row in rows:
        gc.record([row])  # the events commit: their search values are not their commit's business
    assert gc.fold_if_due() == 0 and "not folded in" in caplog.text
    assert counts(audited) == (0, 0, FOLD_AT + 10)
    monkeypatch.undo()
    assert catch_up(audited) == FOLD_AT + 10 and counts(audited)[0] == expected_index(rows)


@POSTGRES_ONLY
def test_events_are_sent_at_submit_and_durable_when_wait_returns(audited):
    """Pipelined: submit sends the append and returns while PostgreSQL works on it (here,
    blocked behind another transaction's lock on the chain head); wait returns once it
    has committed, and the answer read by one waiter settles every ticket it carried."""
    gc = GroupCommitter(audited)
    rows = reads(3)
    with audited.connect() as blocker:
        blocker.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
        started = time.monotonic()
        first = gc.submit([rows[0]])
        second, third = gc.submit([rows[1]]), gc.submit([rows[2]])  # wait for the next append
        assert time.monotonic() - started < 1.0 and not first.done
        assert gc.inflight == [first] and gc.waiting == [second, third]
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (gc.wait(third), done.set()))
        waiter.start()
        assert not done.wait(0.3)  # still behind the lock: not durable, not answered
        blocker.rollback()
    waiter.join(10)
    assert done.is_set() and first.done and second.done and third.done
    assert gc.commits == 2  # the first append, then the two that gathered behind it
    gc.wait(first)
    assert counts(audited)[2] == 3


@POSTGRES_ONLY
def test_an_append_that_fails_fails_its_group_and_the_next_one_commits(audited, caplog):
    from fhirimg.audit.committer import AuditUnavailable
    gc = GroupCommitter(audited, timeout=0.5)  # the committer's lock_timeout
    rows = reads(2)
    with audited.connect() as blocker:
        blocker.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
        ticket = gc.submit([rows[0]])
        with pytest.raises(AuditUnavailable):
            gc.wait(ticket)
        blocker.rollback()
    assert "audit events not recorded" in caplog.text
    gc.record([rows[1]])
    assert counts(audited)[2] == 1


@POSTGRES_ONLY
def test_concurrent_requests_share_appends_and_lose_none(audited):
    gc = GroupCommitter(audited)
    rows = reads(400)
    errors = []

    def request(chunk):
        try:
            for row in chunk:
                gc.wait(gc.submit([row]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(rows[n::8],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and counts(audited)[2] == 400
    assert gc.commits <= 400 and gc.inflight is None and gc.waiting == []
    with audited.connect() as conn:
        from fhirimg.audit.chain import verify_chain
        assert verify_chain(conn).ok


@POSTGRES_ONLY
def test_a_reader_whose_own_time_runs_out_hands_the_reading_back(audited):
    """A request's deadline is its own: when it runs out while the append it reads for is
    still within the group's time, the group stays in flight for another waiter."""
    gc = GroupCommitter(audited, timeout=5)
    rows = reads(1)
    with audited.connect() as blocker:
        blocker.execute(text("SELECT seq FROM audit_head WHERE id = 1 FOR UPDATE"))
        ticket = gc.submit([rows[0]])
        with gc.cond:
            gc.read_answer(time.monotonic() + 0.3)
            assert gc.inflight == [ticket] and not gc.reading and not ticket.done and gc.conn is not None
        blocker.rollback()
    gc.wait(ticket)
    assert ticket.error is None and counts(audited)[2] == 1


@POSTGRES_ONLY
def test_a_forked_child_starts_afresh_and_leaves_its_parents_connection_alone(audited):
    gc = GroupCommitter(audited)
    rows = reads(2)
    gc.record([rows[0]])
    parents = gc.conn
    gc.pid = -1  # as a child sees its parent's committer after fork
    gc.record([rows[1]])
    assert gc.conn is not parents and not parents.closed and gc.inherited == [parents]
    assert counts(audited)[2] == 2
    parents.close()
