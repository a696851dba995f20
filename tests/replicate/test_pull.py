"""Pull replication between two real fhirimg servers (exchanging.html push/pull)."""
from __future__ import annotations

import threading

import requests
from sqlalchemy import update

from fhirimg.replicate.schema import replication_link

from ..factories import make_patient
from .state import all_versions, current_state, version_count
from .writers import FHIR, seed_changes, write_changes


def test_pull_copies_every_version_with_the_same_ids_and_content(make_site):
    a, b = make_site("a"), make_site("b")
    write_changes(a.url, 30, seed=1)  # over HTTP: creates, updates, deletes, transactions
    seed_changes(a.site.repo, 150, seed=1)
    result = b.run(b.link("pull", a))
    assert result.caught_up and result.applied == version_count(a.engine)
    assert all_versions(b.engine) == all_versions(a.engine)
    assert current_state(b.engine) == current_state(a.engine)


def test_pull_again_applies_nothing_even_from_the_start(make_site):
    a, b = make_site("a"), make_site("b")
    seed_changes(a.site.repo, 60, seed=2)
    link = b.link("pull", a)
    b.run(link)
    count = version_count(b.engine)
    assert b.run(link).applied == 0
    with b.engine.begin() as conn:  # lose the cursor: every change comes again
        conn.execute(update(replication_link).values(cursor=None))
    again = b.run(link)
    assert again.applied == 0 and again.skipped == version_count(a.engine)
    assert version_count(b.engine) == count


def test_deletes_propagate_and_types_filter(make_site):
    a, b = make_site("a"), make_site("b")
    pid = requests.post(f"{a.url}/Patient", json=make_patient(), headers=FHIR).json()["id"]
    eid = requests.post(f"{a.url}/Endpoint", json={"resourceType": "Endpoint", "status": "active",
                                                    "address": "http://127.0.0.1:1/dicom-web",
                                                    "connectionType": [{"coding": [{"code": "dicom-wado-rs"}]}]},
                        headers=FHIR).json()["id"]
    link = b.link("pull", a, types=["Patient"])
    b.run(link)
    assert requests.get(f"{b.url}/Patient/{pid}").status_code == 200
    assert requests.get(f"{b.url}/Endpoint/{eid}").status_code == 404
    requests.delete(f"{a.url}/Patient/{pid}")
    b.run(link)
    assert requests.get(f"{b.url}/Patient/{pid}").status_code == 410


def test_pull_every_second_while_four_writers_write_1000_changes(make_site):
    a, b = make_site("a"), make_site("b")
    link = b.link("pull", a)
    stop = threading.Event()
    rounds = []

    def puller():
        while not stop.is_set():
            rounds.append(b.run(link))
            stop.wait(1.0)

    thread = threading.Thread(target=puller)
    thread.start()
    writers = [threading.Thread(target=write_changes, args=(a.url, 250, seed)) for seed in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(300)
    stop.set()
    thread.join(60)
    b.run(link)
    assert len(rounds) >= 2 and version_count(a.engine) >= 1000
    assert all_versions(b.engine) == all_versions(a.engine)
    assert current_state(b.engine) == current_state(a.engine)


def test_a_page_is_applied_in_a_few_statements_not_several_per_change(make_site):
    """Catch-up speed (issue 20): a page's resources and the link's bookkeeping are read
    ahead in one query a type and written once; before, each change cost five round trips
    on PostgreSQL and nine statements on SQLite."""
    from sqlalchemy import event
    a, b = make_site("a"), make_site("b")  # page_size 50
    seed_changes(a.site.repo, 200, seed=21, per_transaction=50)
    creates = sum(1 for versions in all_versions(a.engine).values() for _ in versions[:1])
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)
    event.listen(b.engine, "before_cursor_execute", count)
    try:
        result = b.run(b.link("pull", a))
    finally:
        event.remove(b.engine, "before_cursor_execute", count)
    assert result.applied == version_count(a.engine) == 200
    updates = result.applied - creates  # each still moves its current row by compare-and-set
    assert len(statements) <= 2 * updates + 25 * result.pages, (len(statements), updates, result.pages)
    assert all_versions(b.engine) == all_versions(a.engine)
