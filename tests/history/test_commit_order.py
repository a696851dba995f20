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


def test_one_commit_numbers_its_versions_in_order_and_rows_keep_server_meta_in_columns(engine):
    """The versions of one transaction take consecutive seq values and one lastUpdated; the
    stored content leaves versionId/lastUpdated to the row's columns and reads put them back."""
    from sqlalchemy import select, update

    from fhirimg.store.schema import resource_version
    import orjson

    repo = Repository(engine)
    with repo.transaction() as uow:
        a = uow.create("Patient", make_patient(family="A"))
        b = uow.create("Patient", {**make_patient(family="B"), "meta": {"tag": [{"code": "x"}], "versionId": "9"}})
        a2 = uow.update("Patient", a.res_id, make_patient(family="A2"))
    seqs = [v.seq for v in uow.written]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert len({v.last_updated_ms for v in uow.written}) == 1
    with engine.connect() as conn:
        rows = conn.execute(select(resource_version).where(resource_version.c.seq.in_(seqs))
                            .order_by(resource_version.c.seq)).all()
    assert [(r.res_id, r.version) for r in rows] == [(a.res_id, 1), (b.res_id, 1), (a.res_id, 2)]
    stored_b = orjson.loads(rows[1].content)
    assert stored_b["meta"] == {"tag": [{"code": "x"}]}
    read_b = repo.read("Patient", b.res_id).resource
    assert read_b == b.resource and read_b["meta"]["versionId"] == "1" and read_b["meta"]["tag"] == [{"code": "x"}]
    assert list(read_b)[:3] == ["resourceType", "id", "meta"]
    assert repo.read("Patient", a.res_id).resource == a2.resource
    # A row written before the content left server meta out (it carried it inside) reads the same.
    legacy = dict(a2.resource)
    with engine.begin() as conn:
        conn.execute(update(resource_version).where(resource_version.c.seq == seqs[2])
                     .values(content=orjson.dumps(legacy)))
    assert repo.read("Patient", a.res_id).resource == a2.resource
