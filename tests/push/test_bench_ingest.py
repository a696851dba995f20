"""The ingest benchmark's workload is what it claims: Bundles the server accepts (and that
are idempotent), and a raw-store path writing the same resources. Not timed here."""
from __future__ import annotations

from fhirimg.bench.ingest import make_study, store_study, transaction_bundle

from ..conftest import table_counts


def test_bench_bundles_are_accepted_and_idempotent(client, engine):
    items = [make_study("t", n, series=2, instances=3, shared_endpoint=True) for n in range(3)]
    for item in items:
        response = client.post("/fhir", data=transaction_bundle(item),
                               headers={"Content-Type": "application/fhir+json"})
        assert response.status_code == 200, response.get_data(as_text=True)
    counts = table_counts(engine)
    response = client.post("/fhir", data=transaction_bundle(items[0]), headers={"Content-Type": "application/fhir+json"})
    assert [e["response"]["status"] for e in response.get_json()["entry"]] == ["200 OK"] * 3
    assert table_counts(engine) == counts
    study = response.get_json()["entry"][2]["resource"]
    assert len(study["series"]) == 2 and all(len(s["instance"]) == 3 for s in study["series"])
    assert counts["resource_current"] == 3 + 1 + 3  # patients + one shared endpoint + studies


def test_raw_store_writes_the_same_resources(repo, engine):
    endpoint_ids: dict[str, str] = {}
    for n in range(2):
        store_study(repo, make_study("r", n, series=1, instances=10, shared_endpoint=True), endpoint_ids)
    counts = table_counts(engine)
    assert counts["resource_current"] == counts["resource_version"] == 2 + 1 + 2
    with repo.reading() as uow:
        (endpoint_id,) = uow.search_ids("Endpoint", [("identifier", "r-pacs")])
    assert endpoint_ids == {"r-pacs": endpoint_id}
