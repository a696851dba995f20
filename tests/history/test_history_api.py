"""The history interaction (http.html#history) through the HTTP API, on SQLite and PostgreSQL."""
from __future__ import annotations

from fhirimg.store import Repository
from fhirimg.store.records import format_instant

from ..api.outcomes import assert_outcome
from ..factories import make_endpoint, make_imaging_study, make_patient
from .walk import keys, local, walk

FHIR = {"Content-Type": "application/fhir+json"}


def write_three_versions(client) -> str:
    pid = client.post("/fhir/Patient", json=make_patient(family="One"), headers=FHIR).json["id"]
    assert client.put(f"/fhir/Patient/{pid}", json=make_patient(id=pid, family="Two"), headers=FHIR).status_code == 200
    assert client.delete(f"/fhir/Patient/{pid}").status_code in (200, 204)
    return pid


def test_instance_history_is_newest_first_with_request_and_response(client):
    pid = write_three_versions(client)
    bundle = client.get(f"/fhir/Patient/{pid}/_history").json
    assert bundle["type"] == "history" and bundle["total"] == 3
    deleted, updated, created = bundle["entry"]
    assert deleted["request"] == {"method": "DELETE", "url": f"Patient/{pid}"}
    assert "resource" not in deleted and deleted["response"]["etag"] == 'W/"3"'
    assert updated["request"] == {"method": "PUT", "url": f"Patient/{pid}"}
    assert updated["response"]["status"] == "200 OK"
    assert updated["resource"]["name"][0]["family"] == "Two"
    assert created["request"] == {"method": "POST", "url": "Patient"}
    assert created["response"]["status"] == "201 Created"
    assert created["resource"]["name"][0]["family"] == "One"
    assert created["resource"]["meta"]["versionId"] == "1"
    for entry in (updated, created):
        assert entry["response"]["lastModified"] == entry["resource"]["meta"]["lastUpdated"]
        assert entry["fullUrl"].endswith(f"/fhir/Patient/{pid}")


def test_a_patch_is_a_patch_entry_with_the_resource_as_it_was(client):
    pid = client.post("/fhir/Patient", json=make_patient(family="Before"), headers=FHIR).json["id"]
    patched = client.patch(f"/fhir/Patient/{pid}", json=[{"op": "replace", "path": "/gender", "value": "other"}],
                           headers={"Content-Type": "application/json-patch+json"})
    assert patched.status_code == 200
    client.put(f"/fhir/Patient/{pid}", json=make_patient(id=pid, family="After"), headers=FHIR)
    third, second, first = client.get(f"/fhir/Patient/{pid}/_history").json["entry"]
    assert second["request"] == {"method": "PATCH", "url": f"Patient/{pid}"}
    assert second["response"]["etag"] == 'W/"2"'
    assert second["resource"]["gender"] == "other" and second["resource"]["name"][0]["family"] == "Before"
    assert second["resource"]["meta"]["versionId"] == "2"
    assert third["resource"]["name"][0]["family"] == "After"


def test_recreate_after_delete_is_201_in_history(client):
    pid = write_three_versions(client)
    assert client.put(f"/fhir/Patient/{pid}", json=make_patient(id=pid), headers=FHIR).status_code == 201
    newest = client.get(f"/fhir/Patient/{pid}/_history").json["entry"][0]
    assert newest["response"]["status"] == "201 Created" and newest["response"]["etag"] == 'W/"4"'


def test_type_history_holds_only_that_type_and_system_history_all(client):
    pid = write_three_versions(client)
    eid = client.post("/fhir/Endpoint", json=make_endpoint(), headers=FHIR).json["id"]
    type_keys = keys(walk(client, "/fhir/Patient/_history")[0])
    assert type_keys == [("Patient", pid, "3"), ("Patient", pid, "2"), ("Patient", pid, "1")]
    assert keys(walk(client, "/fhir/_history")[0]) == [("Endpoint", eid, "1")] + type_keys
    assert keys(walk(client, "/fhir/_history?_type=Endpoint")[0]) == [("Endpoint", eid, "1")]


def test_unknown_instance_history_is_404(client):
    assert_outcome(client.get("/fhir/Patient/nobody/_history"), 404, says="not known")


def test_sort_lastupdated_is_oldest_first(client):
    pid = write_three_versions(client)
    entries = walk(client, f"/fhir/Patient/{pid}/_history?_sort=_lastUpdated&_count=1")[0]
    assert [k[2] for k in keys(entries)] == ["1", "2", "3"]


def test_bad_parameters_are_400_naming_the_parameter(client):
    cases = {"_since=2026-13-01T00:00:00Z": "_since", "_since=yesterday": "_since",
             "_since=2026-01-01T10:00:00": "_since",  # an instant needs a time zone
             "_since=2026-01-01T25:00:00Z": "_since", "_at=soon": "_at", "_count=-1": "_count",
             "_count=ten": "_count", "_sort=family": "_sort", "_cursor=bm90LWEtY3Vyc29y": "_cursor",
             "_list=abc": "_list", "_type=Observation": "_type"}
    for query, param in cases.items():
        assert_outcome(client.get(f"/fhir/_history?{query}"), 400, expression=param)
    assert_outcome(client.get("/fhir/Patient/_history?_type=Patient"), 400, expression="_type")


def test_cursor_beyond_the_servers_changes_is_400(client):
    from fhirimg.history import Cursor
    write_three_versions(client)
    future = Cursor(lo=0, hi=10_000, pos=None).encode()
    assert_outcome(client.get(f"/fhir/_history?_cursor={future}"), 400, expression="_cursor", says="restored")


def test_count_is_capped_by_the_configured_maximum(app, client):
    app.config["FHIRIMG"]["limits"]["max_page_size"] = 2
    write_three_versions(client)
    bundle = client.get("/fhir/_history?_count=50").json
    assert len(bundle["entry"]) == 2 and any(link["relation"] == "next" for link in bundle["link"])


def test_count_zero_returns_no_entries_but_the_poll_point(client):
    write_three_versions(client)
    response = client.get("/fhir/_history?_count=0&_total=accurate")
    assert response.json.get("entry") == [] and response.json["total"] == 3
    assert keys(walk(client, response.headers["X-Next-Poll"])[0]) == []


def test_since_is_inclusive_and_accepts_offsets_and_dates(engine, client):
    times = iter([1_700_000_000_000, 1_700_000_000_500, 1_700_000_001_000])
    repo = Repository(engine, clock=lambda: next(times))
    ids = [repo.create("Patient", make_patient()).res_id for _ in range(3)]
    since = format_instant(1_700_000_000_500)  # the second write's lastUpdated, exactly
    assert [k[1] for k in keys(walk(client, f"/fhir/_history?_since={since}")[0])] == [ids[2], ids[1]]
    # the same instant written as +01:00 (the '+' encoded, and unencoded as a browser would send it)
    assert len(walk(client, "/fhir/_history?_since=2023-11-14T23:13:20%2B01:00")[0]) == 3
    assert len(walk(client, "/fhir/_history?_since=2023-11-14T23:13:20.5+01:00")[0]) == 2
    assert len(walk(client, "/fhir/_history?_since=2023-11-14T22:13:20.5001Z")[0]) == 1  # rounded up
    assert len(walk(client, "/fhir/_history?_since=2023-11-14")[0]) == 3
    assert walk(client, "/fhir/_history?_since=2023-11-15")[0] == []


def test_at_returns_versions_current_during_the_period(engine, client):
    times = iter([1_000_000, 2_000_000, 3_000_000])
    repo = Repository(engine, clock=lambda: next(times))
    pid = repo.create("Patient", make_patient(family="A")).res_id
    repo.update("Patient", pid, make_patient(id=pid, family="B"))
    repo.update("Patient", pid, make_patient(id=pid, family="C"))
    at = format_instant(2_500_000)  # only version 2 was current then (to the millisecond)
    assert [k[2] for k in keys(walk(client, f"/fhir/Patient/{pid}/_history?_at={at}")[0])] == ["2"]
    # 1970-01-01T00:33 (a whole minute is not a FHIR dateTime; a day is): all three
    assert len(walk(client, f"/fhir/Patient/{pid}/_history?_at=1970-01-01")[0]) == 3


def test_many_versions_with_one_lastupdated_page_without_loss_or_repeat(engine, client):
    repo = Repository(engine, clock=lambda: 1_700_000_000_000)  # every write in the same millisecond
    with repo.transaction() as uow:
        written = [uow.create("ImagingStudy", make_imaging_study(series=1, instances=1)).res_id
                   for _ in range(23)]
    for order in ("", "&_sort=_lastUpdated"):
        entries, _ = walk(client, f"/fhir/ImagingStudy/_history?_count=5{order}")
        got = [k[1] for k in keys(entries)]
        assert sorted(got) == sorted(written) and len(set(got)) == 23
        since = format_instant(1_700_000_000_000)
        assert len(walk(client, f"/fhir/ImagingStudy/_history?_count=4&_since={since}{order}")[0]) == 23


def test_pages_are_a_snapshot_and_the_poll_link_gives_exactly_the_rest(client):
    for order in ("", "&_sort=_lastUpdated"):
        poll_before = walk(client, f"/fhir/Patient/_history?_count=4{order}")[1]
        before = [client.post("/fhir/Patient", json=make_patient(), headers=FHIR).json["id"] for _ in range(12)]
        during: list[str] = []

        def write_between_pages(_page):
            during.append(client.post("/fhir/Patient", json=make_patient(), headers=FHIR).json["id"])
            client.put(f"/fhir/Patient/{before[0]}", json=make_patient(id=before[0], family=f"F{len(during)}"),
                       headers=FHIR)

        entries, poll = walk(client, poll_before, between_pages=write_between_pages)
        assert len(during) == 2  # 12 entries in pages of 4: two pauses
        assert sorted(keys(entries)) == sorted(("Patient", pid, "1") for pid in before)
        rest = keys(walk(client, poll)[0])
        expected = [("Patient", pid, "1") for pid in during] + [("Patient", before[0], v) for v in ("2", "3")]
        assert sorted(rest) == sorted(expected)


def test_poll_with_since_meta_lastupdated_misses_nothing(client):
    first = client.get("/fhir/_history")
    write_three_versions(client)
    since = first.json["meta"]["lastUpdated"]
    assert len(walk(client, f"/fhir/_history?_since={since}")[0]) == 3


def test_capability_statement_lists_the_three_history_interactions(client):
    rest = client.get("/fhir/metadata").json["rest"][0]
    assert {"code": "history-system"} in rest["interaction"]
    for resource in rest["resource"]:
        codes = {i["code"] for i in resource["interaction"]}
        if resource["type"] not in ("AuditEvent", "SubscriptionTopic"):  # read and search only
            assert {"history-instance", "history-type"} <= codes


def test_entries_carry_this_sites_origin(client):
    write_three_versions(client)
    response = client.get("/fhir/_history")
    site = response.headers["X-Fhirimg-Site"]
    assert site.startswith("urn:uuid:")
    assert all(e["extension"][0]["valueUri"] == site for e in response.json["entry"])
    assert local(response.headers["X-Next-Poll"]).startswith("/fhir/_history?")


def test_unknown_parameters_are_ignored_unless_handling_is_strict(client):
    write_three_versions(client)
    assert client.get("/fhir/_history?foo=bar").status_code == 200
    assert_outcome(client.get("/fhir/_history?foo=bar", headers={"Prefer": "handling=strict"}), 400,
                   expression="foo")


def test_unsupported_type_and_bad_id_are_rejected(client):
    assert_outcome(client.get("/fhir/Observation/_history"), 404, says="not supported")
    assert client.get("/fhir/Patient/bad$id/_history").status_code in (400, 404)


def test_cursor_order_cannot_be_changed_mid_history(client):
    write_three_versions(client)
    bundle = client.get("/fhir/_history?_count=1").json
    nxt = local([link["url"] for link in bundle["link"] if link["relation"] == "next"][0])
    assert_outcome(client.get(nxt + "&_sort=_lastUpdated"), 400, expression="_sort")
