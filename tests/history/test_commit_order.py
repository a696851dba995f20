"""seq order is commit order: a poller holding a cursor never misses a late commit.

These tests would fail for a sequence taken when a transaction starts or writes (a
PostgreSQL SEQUENCE, an autoincrement key): the slow transaction would commit with a seq
below one a poller had already passed.
"""
from __future__ import annotations

import threading
import time

from fhirimg.history import HistoryQuery, read_history, visible_watermark
from fhirimg.store import Repository

from ..factories import make_patient
from .walk import keys, walk


def seqs_seen_by_polling(engine, poll_cursor):
    with engine.connect() as conn:
        page = read_history(conn, HistoryQuery(count=1000, ascending=True, cursor=poll_cursor))
    return [e.version.seq for e in page.entries], page.poll_cursor


def test_slow_transaction_started_first_commits_after_a_visible_seq(engine, backend):
    repo = Repository(engine)
    written, holding, release = {}, threading.Event(), threading.Event()

    def slow(take_sequence_early: bool):
        with repo.transaction() as uow:
            uow.create("Patient", make_patient(family="Slow"), f"slow-{int(take_sequence_early)}")
            if take_sequence_early:
                uow.flush_versions()  # now holds the change counter's row lock until commit
            holding.set()
            release.wait(10)
        written["slow"] = uow.written[0].seq

    for early in (False, True):
        holding.clear(), release.clear(), written.clear()
        cursor = read_history_poll_start(engine)
        slow_thread = threading.Thread(target=slow, args=(early,))
        slow_thread.start()
        assert holding.wait(10)
        fast_thread = threading.Thread(target=lambda: written.setdefault("fast", repo.create(
            "Patient", make_patient(family="Fast")).seq))
        fast_thread.start()
        fast_thread.join(0.7)
        blocked = fast_thread.is_alive()
        # On PostgreSQL a fast writer commits while the slow one has not yet taken its seq;
        # once the slow one holds the counter (or on SQLite, always) the fast one waits.
        assert blocked == (early or backend == "sqlite")
        seen_before, cursor = seqs_seen_by_polling(engine, cursor)
        with engine.connect() as conn:
            visible_before = visible_watermark(conn)[0]
        release.set()
        slow_thread.join(10), fast_thread.join(10)
        assert written["slow"] > max(seen_before, default=0), "the slow transaction committed below a visible seq"
        assert written["slow"] > visible_before
        if not blocked:
            assert written["fast"] in seen_before and written["fast"] < written["slow"]
        seen_after, _ = seqs_seen_by_polling(engine, cursor)
        assert written["slow"] in seen_after
        assert sorted(seen_before + seen_after) == sorted({written["slow"], written["fast"]})


def count_versions(engine) -> int:
    with engine.connect() as conn:
        return visible_watermark(conn)[0]


def read_history_poll_start(engine):
    with engine.connect() as conn:
        return read_history(conn, HistoryQuery(count=0, ascending=True)).poll_cursor


def test_polling_while_four_writers_run_sees_every_version_once(engine, client):
    repo = Repository(engine)
    stop = threading.Event()
    errors: list[Exception] = []

    def writer(n: int):
        try:
            while not stop.is_set():
                pid = repo.create("Patient", make_patient(family=f"W{n}")).res_id
                repo.update("Patient", pid, make_patient(id=pid, family=f"W{n}b"))
                if n % 2:
                    repo.delete("Patient", pid)
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    poll = "/fhir/_history?_sort=_lastUpdated&_count=7"
    seen: list = []
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and count_versions(engine) < 80:
        entries, poll = walk(client, poll)
        seen.extend(keys(entries))
    stop.set()
    for t in threads:
        t.join(10)
    entries, _ = walk(client, poll)
    seen.extend(keys(entries))
    assert not errors
    everything = keys(walk(client, "/fhir/_history?_count=1000")[0])
    assert len(everything) >= 80
    assert len(seen) == len(set(seen)), "a version was returned twice"
    assert set(seen) == set(everything), "a version was never returned to the poller"
