"""Keyset paging (search.html#paging): links, opaque cursors, and stability while others write."""
from __future__ import annotations

import threading

import pytest

from ..api.outcomes import assert_outcome
from ..factories import make_imaging_study, make_patient
from .helpers import all_pages, entries, follow, link, search


def make_studies(repo, count: int):
    pid = repo.create("Patient", make_patient(mrn="PG")).res_id
    with repo.transaction() as uow:
        ids = [uow.create("ImagingStudy", make_imaging_study(f"Patient/{pid}", started=f"2025-01-{1 + i % 28:02d}")).res_id
               for i in range(count)]
    return pid, ids


@pytest.fixture
def many(repo):
    return make_studies(repo, 500)


@pytest.fixture
def some(repo):
    return make_studies(repo, 45)


def test_paging_while_another_client_writes_neither_repeats_nor_loses(client, repo, many):
    pid, existing = many
    stop = threading.Event()
    written = []

    def writer():
        n = 0
        while not stop.is_set() and n < 300:
            study = make_imaging_study(f"Patient/{pid}")
            written.append(repo.create("ImagingStudy", study).res_id)
            if n % 3 == 0:  # updates of resources already seen or not yet seen must not disturb paging
                target = existing[(n * 37) % len(existing)]
                current = repo.read("ImagingStudy", target).resource
                repo.update("ImagingStudy", target, {**current, "description": f"edit {n}"})
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = all_pages(client, f"ImagingStudy?patient={pid}&_count=7")
    finally:
        stop.set()
        thread.join()
    assert len(seen) == len(set(seen)), "an id was returned twice"
    assert set(existing) <= set(seen), "an id that existed before the first page was lost"
    assert set(seen) <= set(existing) | set(written)
    assert written, "the writer did not write during paging"


def test_paging_sorted_by_date_visits_every_match_once_in_order(client, some, repo):
    pid, existing = some
    seen = all_pages(client, f"ImagingStudy?patient={pid}&_count=4&_sort=-started")
    assert sorted(seen) == sorted(existing)
    started = [repo.read("ImagingStudy", i).resource["started"] for i in seen]
    assert started == sorted(started, reverse=True)


def test_previous_link_returns_the_page_before(client, some):
    pid, _ = some
    first = search(client, f"ImagingStudy?patient={pid}&_count=10&_sort=started")
    second = follow(client, link(first, "next"))
    back = follow(client, link(second, "previous"))
    assert [r["id"] for r in entries(back, "match")] == [r["id"] for r in entries(first, "match")]
    assert link(first, "previous") is None and link(second, "first")


def test_count_is_capped_by_the_configured_maximum(client, some, app):
    app.config["FHIRIMG"]["limits"]["max_page_size"] = 25
    bundle = search(client, "ImagingStudy?_count=1000")
    assert len(entries(bundle, "match")) == 25 and link(bundle, "next")


def test_a_tampered_cursor_is_400(client, some):
    assert_outcome(client.get("/fhir/ImagingStudy?_cursor=not-a-cursor"), 400, expression="_cursor")


def test_a_cursor_from_another_search_is_400(client, some):
    pid, _ = some
    first = search(client, f"ImagingStudy?patient={pid}&_count=5")
    cursor = link(first, "next").split("_cursor=")[1]
    assert_outcome(client.get(f"/fhir/ImagingStudy?modality=CT&_count=5&_cursor={cursor}"), 400,
                   expression="_cursor")
