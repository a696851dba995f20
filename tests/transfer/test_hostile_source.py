"""A source that sends bad UIDs, non-DICOM parts and instances nobody asked for.

Each bad object is rejected and recorded in Task.output, the good ones are stored, nothing
else reaches the disk, and a transfer with rejected instances is never called complete.
"""
from __future__ import annotations

import io
import time
import uuid

import orjson
import pydicom

from fhirimg.transfer.taskoutput import OUTPUT_SYSTEM, output_value
from fhirimg.transfer.tasks import run_retrieve

from .dicomfactory import make_study
from .scripted_server import ScriptedServer
from .site import make_site


def multipart(parts: list[bytes]) -> tuple[dict, bytes]:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}, body


def dicom_json(ds) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [ds.StudyInstanceUID]},
            "0020000E": {"vr": "UI", "Value": [ds.SeriesInstanceUID]},
            "00080018": {"vr": "UI", "Value": [ds.SOPInstanceUID]},
            "00080016": {"vr": "UI", "Value": [ds.SOPClassUID]},
            "00080060": {"vr": "CS", "Value": [ds.Modality]},
            "00200013": {"vr": "IS", "Value": [int(ds.InstanceNumber)]}}


def hostile_source():
    """A study of 3 instances (A, B, C) served with every kind of bad content around them."""
    study = make_study(series=1, instances=3, rows=16, columns=16, seed=61)
    stranger = make_study(series=1, instances=1, rows=16, columns=16, seed=62)
    series = study.series[0]
    a, b, c = sorted(series.instances, key=lambda s: pydicom.dcmread(io.BytesIO(series.instances[s])).InstanceNumber)
    datasets = [pydicom.dcmread(io.BytesIO(series.instances[s])) for s in (a, b, c)]
    json_headers = {"Content-Type": "application/dicom+json"}

    def route(handler):
        path = handler.path.split("?")[0]
        if path.endswith("/series"):
            return 200, json_headers, orjson.dumps([
                {"0020000E": {"vr": "UI", "Value": [series.series_uid]}, "00080060": {"vr": "CS", "Value": ["CT"]}},
                {"0020000E": {"vr": "UI", "Value": ["../../etc"]}}])
        if path.endswith("/instances"):
            listed = [dicom_json(ds) for ds in datasets]
            listed.append({"00080018": {"vr": "UI", "Value": ["1.2.3/../../passwd"]}})
            return 200, json_headers, orjson.dumps(listed)
        if path.endswith("/metadata"):
            return 200, json_headers, orjson.dumps([dicom_json(ds) for ds in datasets])
        if path.endswith(f"/series/{series.series_uid}"):
            headers, body = multipart([series.instances[a], b"this is not DICOM at all" * 10,
                                       next(iter(stranger.instances.values())), series.instances[b]])
            return 200, headers, body
        if "/instances/" in path:  # the fallback for C gets junk again
            headers, body = multipart([b"\x00" * 128 + b"DICM" + b"\xff" * 64])
            return 200, headers, body
        return 404, {}, b""

    return study, (a, b, c), route


def rejection_reasons(task: dict) -> list[str]:
    return [o["type"]["text"] for o in task["output"]
            if any(c["code"] == "rejected" and c["system"] == OUTPUT_SYSTEM for c in o["type"]["coding"])]


def test_bad_objects_are_rejected_and_recorded_the_rest_is_stored(tmp_path):
    study, (a, b, c), route = hostile_source()
    site = make_site(tmp_path)
    with ScriptedServer([route]) as server:
        study_id = site.add_study(server.url + "/dicom-web", study.study_uid)
        task_id = site.start_retrieve(study_id)
        assert run_retrieve(task_id, site.context()) == "failed"
    task = site.task(task_id)
    assert task["statusReason"]["concept"]["text"] == "1 of 3 instances could not be retrieved"
    assert sorted(set(rejection_reasons(task))) == ["invalid-uid", "not-dicom", "not-retrieved", "unexpected-uid"]
    assert output_value(task, "instances-stored") == 2
    blobstore = site.context().blobstore
    files = {p.stem for p in blobstore.root.rglob("*.dcm")}
    assert files == {a, b}
    assert not list(blobstore.staging.iterdir())
    assert all(".." not in str(p) and "passwd" not in str(p) for p in blobstore.root.rglob("*"))
    # The ImagingStudy followed what was stored (issue 17: in the transaction that indexed it)
    # but, the study being incomplete, does not point at our DICOMweb.
    imaging = site.client.get(f"/fhir/ImagingStudy/{study_id}").json
    assert {a, b} <= {i["uid"] for s in imaging["series"] for i in s["instance"]}
    assert not any(e["reference"] == "Endpoint/fhirimg-dicomweb" for e in imaging.get("endpoint", []))


def test_study_uid_that_is_not_a_uid_fails_the_task_without_a_request(tmp_path):
    site = make_site(tmp_path)
    with ScriptedServer([(500, {}, b"")]) as server:
        study_id = site.add_study(server.url + "/dicom-web", "1.2.3")
        task_id = site.start_retrieve(study_id)  # $retrieve itself refuses such a study (422)
        stored = site.client.get(f"/fhir/ImagingStudy/{study_id}").json
        stored["identifier"][0]["value"] = "urn:oid:1.2.3/../../etc"
        assert site.client.put(f"/fhir/ImagingStudy/{study_id}", json=stored).status_code == 200
        assert run_retrieve(task_id, site.context()) == "failed"
        assert server.requests == []
    assert "Study Instance UID" in site.task(task_id)["statusReason"]["concept"]["text"]


def test_an_instance_only_series_metadata_lists_is_fetched_after_steps_2_and_3(tmp_path):
    """Step 2 runs beside step 3: what only the metadata revealed is fetched once both are done."""
    study = make_study(series=1, instances=3, rows=16, columns=16, seed=63)
    series = study.series[0]
    datasets = {sop: pydicom.dcmread(io.BytesIO(data)) for sop, data in series.instances.items()}
    late = sorted(series.instances)[0]
    listed = [sop for sop in sorted(series.instances) if sop != late]
    json_headers = {"Content-Type": "application/dicom+json"}

    def route(handler):
        path = handler.path.split("?")[0]
        if path.endswith("/series"):
            return 200, json_headers, orjson.dumps([{"0020000E": {"vr": "UI", "Value": [series.series_uid]}}])
        if path.endswith("/instances"):
            return 200, json_headers, orjson.dumps([dicom_json(datasets[sop]) for sop in listed])
        if path.endswith("/metadata"):
            return 200, json_headers, orjson.dumps([dicom_json(ds) for ds in datasets.values()])
        if path.endswith(f"/series/{series.series_uid}"):  # as QIDO saw the series
            headers, body = multipart([series.instances[sop] for sop in listed])
            return 200, headers, body
        if path.endswith(f"/instances/{late}"):
            headers, body = multipart([series.instances[late]])
            return 200, headers, body
        return 404, {}, b""

    site = make_site(tmp_path)
    with ScriptedServer([route]) as server:
        study_id = site.add_study(server.url + "/dicom-web", study.study_uid)
        task_id = site.start_retrieve(study_id)
        assert run_retrieve(task_id, site.context()) == "completed"
        fetched_late = [r["path"] for r in server.requests if r["path"].endswith(f"/instances/{late}")]
    task = site.task(task_id)
    assert output_value(task, "instances-stored") == 3 and output_value(task, "instances-skipped") == 0
    assert len(fetched_late) == 1 and not rejection_reasons(task)
    assert {p.stem for p in site.context().blobstore.root.rglob("*.dcm")} == set(series.instances)


def listing_route(series, datasets, instances_answer):
    json_headers = {"Content-Type": "application/dicom+json"}
    seen: list[tuple[str, float]] = []

    def route(handler):
        path = handler.path.split("?")[0]
        seen.append((path, time.monotonic()))
        if path.endswith("/series"):
            return 200, json_headers, orjson.dumps([{"0020000E": {"vr": "UI", "Value": [series.series_uid]}}])
        if path.endswith("/instances"):
            time.sleep(0.3)  # a slow listing: the series request must not wait for it
            return instances_answer(json_headers)
        if path.endswith("/metadata"):
            return 200, json_headers, orjson.dumps([dicom_json(ds) for ds in datasets.values()])
        if path.endswith(f"/series/{series.series_uid}"):
            return (200, *multipart(list(series.instances.values())))
        return 404, {}, b""

    return route, seen


def test_a_fresh_series_is_asked_for_while_it_is_listed_and_checked_against_the_listing(tmp_path):
    study = make_study(series=1, instances=3, rows=16, columns=16, seed=64)
    series = study.series[0]
    datasets = {sop: pydicom.dcmread(io.BytesIO(data)) for sop, data in series.instances.items()}
    route, seen = listing_route(series, datasets, lambda headers: (
        200, headers, orjson.dumps([dicom_json(ds) for ds in datasets.values()])))
    site = make_site(tmp_path)
    with ScriptedServer([route]) as server:
        task_id = site.start_retrieve(site.add_study(server.url + "/dicom-web", study.study_uid))
        assert run_retrieve(task_id, site.context()) == "completed"
    asked = {path.rsplit("/", 1)[1]: at for path, at in seen}
    assert asked[series.series_uid] < asked["instances"] + 0.3  # left before the listing answered
    assert {p.stem for p in site.context().blobstore.root.rglob("*.dcm")} == set(series.instances)


def test_a_listing_that_fails_while_the_series_streams_fails_the_task_and_stores_nothing(tmp_path):
    study = make_study(series=1, instances=3, rows=16, columns=16, seed=65)
    series = study.series[0]
    datasets = {sop: pydicom.dcmread(io.BytesIO(data)) for sop, data in series.instances.items()}
    route, _ = listing_route(series, datasets, lambda headers: (400, {}, b"no"))
    site = make_site(tmp_path)
    with ScriptedServer([route]) as server:
        task_id = site.start_retrieve(site.add_study(server.url + "/dicom-web", study.study_uid))
        assert run_retrieve(task_id, site.context()) == "failed"
    assert "400" in site.task(task_id)["statusReason"]["concept"]["text"]
    blobstore = site.context().blobstore
    assert not list(blobstore.root.rglob("*.dcm")) and not list(blobstore.staging.iterdir())
