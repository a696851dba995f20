"""/metrics: the format, requests by route template and status, and the pool."""
from __future__ import annotations

import uuid

from prometheus_client.parser import text_string_to_metric_families

from fhirimg.store import make_engine

from ..factories import make_patient
from .conftest import scrape, value

FHIR = {"Content-Type": "application/fhir+json"}
READ_ROUTE = "/fhir/<restype:res_type>/<res_id>"


def test_metrics_answers_in_prometheus_text_format(make_app):
    client = make_app(anonymous=True).test_client()
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    names = {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"fhirimg_http_requests", "fhirimg_http_request_duration_seconds", "fhirimg_db_pool_size",
            "fhirimg_tasks", "fhirimg_blob_store_bytes"} <= names


def test_openmetrics_when_the_scraper_asks_for_it(make_app):
    client = make_app(anonymous=True).test_client()
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).endswith("# EOF\n")


def test_requests_are_counted_by_route_template_and_status(make_app):
    client = make_app(anonymous=True).test_client()
    created = client.post("/fhir/Patient", json=make_patient(), headers=FHIR)
    assert created.status_code == 201
    for _ in range(3):
        assert client.get(f"/fhir/Patient/{created.json['id']}").status_code == 200
    assert client.get("/fhir/Patient/no-such-patient").status_code == 404
    body = scrape(client)
    assert value(body, "fhirimg_http_requests_total", method="GET", route=READ_ROUTE, status="200") == 3
    assert value(body, "fhirimg_http_requests_total", method="GET", route=READ_ROUTE, status="404") == 1
    assert value(body, "fhirimg_http_requests_total", method="POST", route="/fhir/<restype:res_type>",
                 status="201") == 1


def test_latency_histogram_has_one_observation_per_request(make_app):
    client = make_app(anonymous=True).test_client()
    for _ in range(4):
        client.get("/fhir/metadata")
    body = scrape(client)
    labels = {"method": "GET", "route": "/fhir/metadata"}
    assert value(body, "fhirimg_http_request_duration_seconds_count", **labels) == 4
    assert value(body, "fhirimg_http_request_duration_seconds_bucket", le="+Inf", **labels) == 4
    assert 0 < value(body, "fhirimg_http_request_duration_seconds_sum", **labels) < 60


def test_no_label_holds_an_id_a_version_or_a_search_value(make_app):
    """Ids, UIDs and search values are unbounded and may be patient data: the route label is
    the URL rule, so none of them can appear anywhere in the exposition."""
    client = make_app(anonymous=True).test_client()
    patient_id, mrn, stray = f"pid{uuid.uuid4().hex[:12]}", f"MRN{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    assert client.put(f"/fhir/Patient/{patient_id}", json={**make_patient(mrn), "id": patient_id},
                      headers=FHIR).status_code == 201
    client.get(f"/fhir/Patient/{patient_id}")
    client.get(f"/fhir/Patient/{patient_id}/_history/1")
    client.get(f"/fhir/Patient?identifier={mrn}")
    client.get(f"/fhir/Patient/{patient_id}-missing")
    client.get(f"/no/such/path/{stray}")
    client.get(f"/dicom-web/studies/1.2.3.{stray[:8]}/series")
    body = scrape(client)
    for secret in (patient_id, mrn, stray, stray[:8]):
        assert secret not in body
    assert value(body, "fhirimg_http_requests_total", method="GET", route="unmatched", status="404") == 1


def test_an_unknown_method_is_counted_as_other(make_app):
    client = make_app(anonymous=True).test_client()
    client.open("/fhir/Patient", method="BREW")
    body = scrape(client)
    assert "BREW" not in body
    assert value(body, "fhirimg_http_requests_total", method="other", route="unmatched", status="405") == 1


def test_pool_gauges_show_the_pool_size_and_no_connection_left_out(make_app, database):
    engine = make_engine(database[0], schema=database[1], pool_size=5)
    try:
        client = make_app(anonymous=True, app_engine=engine).test_client()
        for _ in range(3):
            client.get("/fhir/Patient")
        body = scrape(client)
    finally:
        engine.dispose()
    assert value(body, "fhirimg_db_pool_size") == 5
    assert value(body, "fhirimg_db_pool_connections_in_use") == 0
