"""Idempotent re-push (issue 3): an EHR re-sending the same study creates no duplicates and,
when nothing changed, no new versions - sequentially and from 8 threads at once."""
from __future__ import annotations

import copy
import threading

import pytest

from ..conftest import table_counts
from .bundles import ehr_transaction, ok, post_bundle, statuses


def resource_counts(client) -> dict[str, int]:
    """Live resources per type, via the API (what a client sees)."""
    from sqlalchemy import text
    engine = client.application.extensions["fhirimg.engine"]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT res_type, count(*) FROM resource_current WHERE is_deleted = :f "
                                 "GROUP BY res_type"), {"f": False})
        return {row[0]: row[1] for row in rows}


@pytest.mark.parametrize("patient_method", ["PUT", "POST"])
def test_posting_the_same_transaction_three_times_writes_once(client, engine, patient_method):
    document = ehr_transaction(patient_method=patient_method)
    first = ok(post_bundle(client, copy.deepcopy(document)))
    after_first = table_counts(engine)
    for _ in range(2):
        again = ok(post_bundle(client, copy.deepcopy(document)))
        assert table_counts(engine) == after_first
        assert statuses(again) == ["200 OK"] * 3
        assert [e["response"]["location"] for e in again["entry"]] == \
            [e["response"]["location"] for e in first["entry"]]
    assert resource_counts(client) == {"Patient": 1, "Endpoint": 1, "ImagingStudy": 1}
    assert all(e["response"]["etag"] == 'W/"1"' for e in again["entry"])


def test_re_push_with_a_changed_study_versions_only_the_study(client):
    document = ehr_transaction()
    first = ok(post_bundle(client, copy.deepcopy(document)))
    document["entry"][2]["resource"]["description"] = "CT chest with contrast"
    second = ok(post_bundle(client, document))
    assert statuses(second) == ["200 OK"] * 3
    assert [e["response"]["etag"] for e in second["entry"]] == ['W/"1"', 'W/"1"', 'W/"2"']
    assert second["entry"][2]["response"]["location"].rsplit("/", 1)[0] == \
        first["entry"][2]["response"]["location"].rsplit("/", 1)[0]
    assert resource_counts(client) == {"Patient": 1, "Endpoint": 1, "ImagingStudy": 1}


@pytest.mark.parametrize("patient_method", ["PUT", "POST"])
def test_eight_threads_posting_the_same_transaction_create_each_resource_once(app, client, patient_method):
    document = ehr_transaction(patient_method=patient_method, series=2, instances=5)
    barrier = threading.Barrier(8)
    results: list = [None] * 8

    def push(i: int) -> None:
        own = app.test_client()
        own.environ_base.update(client.environ_base)  # the same bearer token
        barrier.wait()
        response = post_bundle(own, copy.deepcopy(document))
        results[i] = (response.status_code, response.get_json())

    threads = [threading.Thread(target=push, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert [r[0] for r in results] == [200] * 8, [r[1] for r in results if r[0] != 200]
    assert resource_counts(client) == {"Patient": 1, "Endpoint": 1, "ImagingStudy": 1}
    locations = {tuple(e["response"]["location"] for e in r[1]["entry"]) for r in results}
    assert len(locations) == 1  # every thread was answered with the same resources, version 1
    assert sorted(statuses(r[1]).count("201 Created") for r in results) == [0] * 7 + [3]
