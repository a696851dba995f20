"""The search benchmark's population and plans: seeded rows equal the write path's, no query
of the HIE mix plans a full table scan (SQLite and PostgreSQL)."""
from __future__ import annotations

import random

import orjson
import pytest
from sqlalchemy import select

from fhirimg.bench.search import explain, query_mix, sample
from fhirimg.bench.search_seed import (
    Population,
    make_study,
    seed_population,
    study_index_rows,
)
from fhirimg.search.extract import extract_index_rows
from fhirimg.search.query import SearchRequest
from fhirimg.search.searchset import SearchContext, run_search
from fhirimg.store.schema import resource_current, resource_version


def test_generated_index_rows_equal_the_write_path_extraction():
    rng = random.Random(2)
    population = Population(patients=[("p1", "m1")], endpoints=["e1"])
    for _ in range(50):
        study = dict(make_study(rng, population, [1] * 8), id="s1")
        fast, reference = study_index_rows(study), extract_index_rows(study)
        for kind, rows in reference.items():
            key = lambda r: repr(sorted(r.items()))
            assert sorted(map(key, fast[kind])) == sorted(map(key, rows)), kind


@pytest.fixture
def seeded(repo):
    return seed_population(repo, studies=1500, patients=300, batch=500)


def test_seeded_population_is_searchable_and_plans_use_indexes(repo, engine, seeded):
    values = sample(repo)
    assert values["studies"] == 1500
    mix = query_mix(values, random.Random(1))
    engine.dispose()
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    for name, make in mix.items():
        plan, scans = explain(engine, "ImagingStudy", make())
        assert not scans, f"{name} scans a whole table:\n{plan}"
    patient_id, _ = values["patients"][0]
    request = SearchRequest.parse("ImagingStudy", [("patient", patient_id), ("_count", "100")])
    with repo.reading() as uow:
        bundle = run_search(uow, request, SearchContext("http://x/fhir", 20, 100))
    got = {e["resource"]["id"] for e in bundle.get("entry", [])}
    assert all(e["resource"]["subject"]["reference"] == f"Patient/{patient_id}" for e in bundle.get("entry", []))
    with repo.reading() as uow:
        rows = uow.conn.execute(select(resource_version.c.res_id, resource_version.c.content).join(
            resource_current, resource_current.c.res_id == resource_version.c.res_id).where(
            resource_current.c.res_type == "ImagingStudy")).all()
    want = {r.res_id for r in rows if orjson.loads(r.content)["subject"]["reference"] == f"Patient/{patient_id}"}
    assert got == want
