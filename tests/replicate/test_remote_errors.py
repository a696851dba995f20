"""Remote failures: retried with backoff where transient, recorded on the link, cursor kept;
one bad entry is recorded and passed over, never blocks the link unseen."""
from __future__ import annotations

import threading

import pytest
from flask import Flask, Response, request
from werkzeug.serving import make_server

from fhirimg.replicate.client import RetryPolicy
from fhirimg.replicate.links import all_states
from fhirimg.replicate.runner import run_link_once
from fhirimg.replicate.settings import Link
from fhirimg.replicate.status import link_statuses

from ..factories import make_patient
from ..services import free_port


class ScriptedSource:
    """A fake FHIR server answering _history with the next scripted (status, body, headers)."""

    def __init__(self):
        self.script: list[tuple[int, object, dict]] = []
        self.requests: list[str] = []
        app = Flask("scripted")

        @app.route("/fhir/_history")
        def history():
            self.requests.append(request.full_path)
            status, body, headers = self.script.pop(0) if self.script else (200, bundle([]), {})
            data = body if isinstance(body, (bytes, str)) else __import__("json").dumps(body)
            return Response(data, status=status, headers=headers, content_type="application/fhir+json")

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/fhir"


def bundle(entries: list[dict]) -> dict:
    return {"resourceType": "Bundle", "type": "history", "meta": {"lastUpdated": "2026-01-01T00:00:00.000Z"},
            "link": [], "entry": entries}


def put_entry(resource: dict, version: int) -> dict:
    return {"fullUrl": f"http://x/fhir/Patient/{resource['id']}", "resource": resource,
            "request": {"method": "PUT", "url": f"Patient/{resource['id']}"},
            "response": {"status": "200 OK", "etag": f'W/"{version}"', "lastModified": "2026-01-01T00:00:00.000Z"}}


@pytest.fixture
def source():
    s = ScriptedSource()
    yield s
    s.server.shutdown()


@pytest.fixture
def site(make_site):
    return make_site("b")


def run(site, source, **extra):
    return run_link_once(site.site, Link("scripted", "pull", source.url, **extra))


def test_503_with_retry_after_is_retried_and_then_applied(site, source):
    source.script = [(503, {"resourceType": "OperationOutcome"}, {"Retry-After": "1"}),
                     (200, bundle([put_entry(make_patient(id="p1"), 1)]), {})]
    result = run(site, source)
    assert not result.errors and result.applied == 1 and len(source.requests) == 2


def test_malformed_bundle_is_recorded_and_the_cursor_stays(site, source):
    source.script = [(200, {"resourceType": "Bundle", "type": "searchset"}, {})] * 5
    result = run(site, source)
    assert result.errors and "history Bundle" in result.errors[0]
    state = all_states(site.engine)[0]
    assert state.cursor is None and "history Bundle" in state.last_error
    status = link_statuses(site.engine, {}, RetryPolicy(), live=False)[0]
    assert "history Bundle" in status.last_error


def test_not_json_and_unreachable_are_recorded(site, source):
    source.script = [(200, b"<html>oops</html>", {})]
    assert "not JSON" in run(site, source).errors[0]
    dead = Link("dead", "pull", f"http://127.0.0.1:{free_port()}/fhir")
    site.site.section["max_attempts"] = 2
    result = run_link_once(site.site, dead)
    assert result.errors and "ConnectionError" in result.errors[0]
    assert [s for s in all_states(site.engine) if s.name == "dead"][0].last_error


def test_an_invalid_entry_is_rejected_recorded_and_the_rest_applied(site, source):
    bad = make_patient(id="bad", gender="robot")  # gender has a required binding
    source.script = [(200, bundle([put_entry(make_patient(id="ok1"), 1), put_entry(bad, 1),
                                   put_entry(make_patient(id="ok2"), 1)]), {})]
    result = run(site, source)
    assert result.applied == 2 and result.rejected == 1 and not result.errors
    status = link_statuses(site.engine, {}, RetryPolicy(), live=False)[0]
    assert status.rejected == 1 and "Patient/bad" in status.recent_events[0]["detail"]
    assert site.site.repo.read("Patient", "bad") is None


def test_links_to_another_host_are_not_followed(site, source):
    page = bundle([])
    page["link"] = [{"relation": "next", "url": "http://169.254.169.254/fhir/_history?x=1"}]
    source.script = [(200, page, {})]
    result = run(site, source)
    assert result.errors and "refusing to follow" in result.errors[0]


@pytest.mark.parametrize("path", ["/fhir-evil/_history?x=1", "/fhirx/_history", "/fhir/../admin/_history",
                                  "/fhir/%2e%2e/admin", "/other/_history"])
def test_links_outside_the_base_path_are_not_followed(site, source, path):
    """Issue 15 item 12: same host, but not under /fhir at a segment boundary, or leaving it."""
    page = bundle([])
    page["link"] = [{"relation": "next", "url": source.url.rsplit("/fhir", 1)[0] + path}]
    source.script = [(200, page, {})]
    result = run(site, source)
    assert result.errors and "refusing to follow" in result.errors[0]
    assert len(source.requests) == 1  # the first page only


def test_an_entry_without_type_and_id_is_rejected_and_passed_over(site, source):
    nameless = {"request": {"method": "DELETE"}, "response": {"status": "200 OK"}}
    source.script = [(200, bundle([nameless, put_entry(make_patient(id="after"), 1)]), {})]
    result = run(site, source)
    assert result.rejected == 1 and result.applied == 1 and not result.errors
    status = link_statuses(site.engine, {}, RetryPolicy(), live=False)[0]
    assert "entry[0]" in status.recent_events[0]["detail"]


def test_429_with_retry_after_is_retried_and_then_applied(site, source):
    source.script = [(429, {"resourceType": "OperationOutcome"}, {"Retry-After": "1"}),
                     (200, bundle([put_entry(make_patient(id="p429"), 1)]), {})]
    result = run(site, source)
    assert not result.errors and result.applied == 1 and len(source.requests) == 2


# --- push to a failing destination ------------------------------------------------------------

class ScriptedDestination:
    """A fake FHIR server taking transaction Bundles at [base] with scripted statuses."""

    def __init__(self):
        self.script: list[int] = []
        self.posted: list[dict] = []
        app = Flask("scripted-destination")

        @app.route("/fhir/_history")
        def history():
            return Response('{"resourceType": "Bundle", "type": "history", "entry": []}',
                            content_type="application/fhir+json")

        @app.route("/fhir", methods=["POST"])
        def transaction():
            body = request.get_json(force=True)
            self.posted.append(body)
            status = self.script.pop(0) if self.script else 200
            if status != 200:
                return Response('{"resourceType": "OperationOutcome"}', status=status,
                                content_type="application/fhir+json")
            answer = {"resourceType": "Bundle", "type": "transaction-response",
                      "entry": [{"response": {"status": "200 OK"}} for _ in body.get("entry", [])]}
            return Response(__import__("json").dumps(answer), content_type="application/fhir+json")

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/fhir"


def test_push_keeps_its_cursor_while_the_destination_fails_and_resends_the_batch(site):
    destination = ScriptedDestination()
    try:
        for i in range(3):
            site.site.repo.create("Patient", make_patient(family=f"Push{i}"), f"push-{i}")
        site.site.section["max_attempts"] = 2
        link = Link("to-flaky", "push", destination.url)
        destination.script = [500, 503]  # both attempts of the first run fail
        first = run_link_once(site.site, link)
        assert first.errors
        state = [s for s in all_states(site.engine) if s.name == "to-flaky"][0]
        assert not state.cursor and state.last_error
        assert len(destination.posted) == 2
        second = run_link_once(site.site, link)  # the destination is back
        assert not second.errors
        state = [s for s in all_states(site.engine) if s.name == "to-flaky"][0]
        assert int(state.cursor) > 0
        ids = lambda body: [e["request"]["url"] for e in body["entry"]]  # noqa: E731
        assert ids(destination.posted[-1]) == ids(destination.posted[0]) == [f"Patient/push-{i}" for i in range(3)]
    finally:
        destination.server.shutdown()


def test_a_reference_to_a_resource_not_yet_replicated_is_stored(site, source):
    """History order can bring a study before its patient: the gap is temporary, so the
    study is stored as it is and the patient arrives on a later page."""
    study = {"resourceType": "ImagingStudy", "id": "s-early", "status": "available",
             "subject": {"reference": "Patient/p-late"}}
    source.script = [(200, bundle([put_entry(study, 1)]), {})]
    assert run(site, source).applied == 1
    stored = site.site.repo.read("ImagingStudy", "s-early")
    assert stored is not None and stored.resource["subject"]["reference"] == "Patient/p-late"
    assert site.site.repo.read("Patient", "p-late") is None
    source.script = [(200, bundle([put_entry(make_patient(id="p-late"), 1)]), {})]
    assert run(site, source).applied == 1
    assert site.site.repo.read("Patient", "p-late") is not None
