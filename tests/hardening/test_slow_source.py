"""Issue 15, item 10 (in part): a source that drips its answer is abandoned after one
throughput window, the whole Task fails with a category, and a cancel is noticed while a
part is still arriving."""
from __future__ import annotations

import threading
import time

import pytest

from fhirimg.transfer.tasks import run_retrieve

from ..transfer.dicomfactory import make_study
from ..transfer.scripted_server import ScriptedServer
from ..transfer.site import make_site
from ..transfer.test_hostile_source import dicom_json


def dripping_source(study, stop: threading.Event):
    """QIDO and metadata answer at once; the series body comes one byte every 50 ms."""
    import io

    import orjson
    import pydicom
    series = study.series[0]
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in series.instances.values()]
    json_headers = {"Content-Type": "application/dicom+json"}

    def route(handler):
        path = handler.path.split("?")[0]
        if path.endswith("/series"):
            return 200, json_headers, orjson.dumps([{"0020000E": {"vr": "UI", "Value": [series.series_uid]},
                                                      "00080060": {"vr": "CS", "Value": ["CT"]}}])
        if path.endswith("/instances") or path.endswith("/metadata"):
            return 200, json_headers, orjson.dumps([dicom_json(ds) for ds in datasets])
        handler.send_response(200)
        handler.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=b')
        handler.end_headers()
        handler.wfile.write(b"--b\r\nContent-Type: application/dicom\r\n\r\n")
        handler.wfile.flush()
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                handler.wfile.write(b"\x00")
                handler.wfile.flush()
            except OSError:
                break
            time.sleep(0.05)
        return None, {}, b""
    return route


@pytest.mark.timeout(60)
def test_a_dripping_source_fails_the_task_after_one_window(tmp_path):
    study = make_study(series=1, instances=2, rows=16, columns=16, seed=71)
    stop = threading.Event()
    with ScriptedServer([dripping_source(study, stop)]) as source:
        site = make_site(tmp_path, min_throughput=10_000, throughput_window=1.0, max_retries=0)
        study_id = site.add_study(f"{source.url}/dicom-web", study.study_uid)
        task_id = site.start_retrieve(study_id)
        started = time.monotonic()
        try:
            assert run_retrieve(task_id, site.context()) == "failed"
        finally:
            stop.set()
        assert time.monotonic() - started < 15  # one window, not one per instance and attempt
    reason = site.task(task_id)["statusReason"]["concept"]["text"]
    assert reason == "the source could not be reached (slower than the configured minimum throughput)"


@pytest.mark.timeout(60)
def test_a_cancel_is_noticed_while_a_part_is_arriving(tmp_path):
    study = make_study(series=1, instances=2, rows=16, columns=16, seed=72)
    stop = threading.Event()
    with ScriptedServer([dripping_source(study, stop)]) as source:
        site = make_site(tmp_path, min_throughput=0, max_retries=0)  # no floor: only the cancel ends it
        study_id = site.add_study(f"{source.url}/dicom-web", study.study_uid)
        task_id = site.start_retrieve(study_id)
        result = {}
        worker = threading.Thread(target=lambda: result.setdefault("status", run_retrieve(task_id, site.context())))
        worker.start()
        time.sleep(2)
        task = site.task(task_id)
        assert site.client.put(f"/fhir/Task/{task_id}", json={**task, "status": "cancelled"}).status_code == 200
        cancelled_at = time.monotonic()
        worker.join(30)
        stop.set()
    assert result.get("status") == "cancelled" and time.monotonic() - cancelled_at < 5
