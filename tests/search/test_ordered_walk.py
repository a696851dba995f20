"""PostgreSQL: a date-sorted page first walks the date index in order under a time budget;
past the budget the savepoint is rolled back and the planner's plan answers. Either way the
transaction stays usable and the session settings are what they were."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from fhirimg.search import searchset
from fhirimg.search.query import SearchRequest


@pytest.fixture
def pg_conn(engine, backend):
    if backend != "postgres":
        pytest.skip("the ordered walk is PostgreSQL's (SQLite's planner takes the index order itself)")
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def settings(conn) -> tuple[str, str]:
    return (conn.execute(text("SHOW enable_sort")).scalar(), conn.execute(text("SHOW statement_timeout")).scalar())


def test_a_walk_within_its_budget_answers_and_restores_the_settings(pg_conn):
    before = settings(pg_conn)
    assert searchset.ordered_walk(pg_conn, text("SELECT 1, 2")) == [(1, 2)]
    assert settings(pg_conn) == before
    assert pg_conn.execute(text("SELECT 3")).scalar() == 3


def test_a_walk_over_its_budget_gives_way_and_leaves_the_transaction_usable(pg_conn):
    before = settings(pg_conn)
    slow = text(f"SELECT pg_sleep({searchset.ORDERED_WALK_BUDGET_MS * 5 / 1000})")
    assert searchset.ordered_walk(pg_conn, slow) is None
    assert settings(pg_conn) == before
    assert pg_conn.execute(text("SELECT 3")).scalar() == 3


def test_only_a_sort_on_a_date_with_a_range_criterion_walks():
    by_started = SearchRequest.parse("ImagingStudy", [("started", "ge2020-01-01"), ("_sort", "-started")])
    by_started.date_spans["started"] = 0
    assert searchset.walks_a_date_range(by_started)
    assert not searchset.walks_a_date_range(SearchRequest.parse("ImagingStudy", [("_sort", "-started")]))
    assert not searchset.walks_a_date_range(SearchRequest.parse("ImagingStudy", [("started", "ge2020-01-01")]))
