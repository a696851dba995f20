"""Issue 15, item 10 (the rest): a Task run has a deadline, checked while a part arrives; the
throughput floor and the deadline watch JSON answers (QIDO, metadata) too; the per-read idle
timeout fires against a source dripping slower than it, and fails the Task with a category
instead of leaving it in progress."""
from __future__ import annotations

import threading
import time

import orjson
import pytest
from marshmallow import ValidationError

from fhirimg.transfer.guard import PastDeadline, TooSlow
from fhirimg.transfer.settings import TransferSettingsSchema
from fhirimg.transfer.tasks import run_retrieve

from ..transfer.dicomfactory import make_study
from ..transfer.scripted_server import ScriptedServer
from ..transfer.site import make_site
from .hostile_sources import PART_HEAD, hostile_source, send_until, staging_files, start_body, study_answers


def steady_part(chunk: int = 10_000):
    """One part that never ends, sent in chunks (the caller paces them)."""
    yield PART_HEAD
    while True:
        yield b"\x5a" * chunk


def run_task(tmp_path, route, **settings):
    """Run one retrieve Task; its final status, the Task, the seconds it took and the source."""
    study = route.study
    with ScriptedServer([route]) as source:
        site = make_site(tmp_path, max_retries=0, **settings)
        task_id = site.start_retrieve(site.add_study(f"{source.url}/dicom-web", study.study_uid))
        started = time.monotonic()
        try:
            status = run_retrieve(task_id, site.context())
        finally:
            route.stop.set()
        took = time.monotonic() - started
    return status, site.task(task_id), took, site


def pixel_source(pieces, pause: float, seconds: float = 30.0):
    """QIDO and metadata at once; every pixel answer sends ``pieces`` with ``pause`` between them."""
    study = make_study(series=1, instances=2, rows=16, columns=16, seed=95)
    stop = threading.Event()

    def body(handler):
        start_body(handler)
        send_until(handler, pieces(), stop, seconds, pause)
    route = hostile_source(study, body, stop)
    route.study, route.stop = study, stop
    return route


def dripping_qido_source(pause: float, seconds: float = 30.0):
    """The series search answers a byte at a time (its Content-Length announced), ``pause`` apart."""
    study = make_study(series=1, instances=2, rows=16, columns=16, seed=96)
    stop = threading.Event()
    answer = study_answers(study.series[0])
    listed = orjson.dumps([{"0020000E": {"vr": "UI", "Value": [study.series[0].series_uid]},
                            "0008103E": {"vr": "LO", "Value": ["x" * 1200]}}])

    def route(handler):
        if not handler.path.split("?")[0].endswith("/series"):
            return answer(handler) or (404, {}, b"")
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.send_header("Content-Length", str(len(listed)))
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        send_until(handler, (listed[i:i + 1] for i in range(len(listed))), stop, seconds, pause)
        return None, {}, b""
    route.study, route.stop = study, stop
    return route


@pytest.mark.timeout(60)
def test_a_task_past_its_deadline_fails_while_a_part_is_still_arriving(tmp_path):
    # ~100 KB/s for ever: no floor is crossed, no part is too large for a long time.
    route = pixel_source(steady_part, pause=0.1)
    status, task, took, site = run_task(tmp_path, route, task_deadline=2.0, min_throughput=0)
    assert status == "failed"
    assert task["statusReason"]["concept"]["text"] == PastDeadline.reason
    assert took < 5  # before: each of 7 requests ran as long as the source sent (6 h job timeout)
    assert staging_files(site) == []


@pytest.mark.timeout(60)
def test_a_dripping_qido_answer_is_abandoned_after_one_throughput_window(tmp_path):
    route = dripping_qido_source(pause=0.05)  # 20 bytes/s
    status, task, took, _ = run_task(tmp_path, route, min_throughput=10_000, throughput_window=1.0)
    assert status == "failed"
    assert task["statusReason"]["concept"]["text"] == TooSlow.reason
    assert took < 5  # before: read blind until the source stopped (30 s), then the Task stayed in-progress


@pytest.mark.timeout(60)
def test_the_deadline_holds_for_a_qido_answer_too(tmp_path):
    route = dripping_qido_source(pause=0.05)
    status, task, took, _ = run_task(tmp_path, route, task_deadline=1.0, min_throughput=0)
    assert status == "failed" and task["statusReason"]["concept"]["text"] == PastDeadline.reason
    assert took < 4


@pytest.mark.timeout(60)
def test_the_idle_timeout_fires_against_a_qido_answer_dripping_slower_than_it(tmp_path):
    route = dripping_qido_source(pause=2.0)
    status, task, took, _ = run_task(tmp_path, route, read_timeout=0.5, min_throughput=0)
    assert status == "failed"  # before: the timeout escaped run_retrieve and left the Task in-progress
    assert task["statusReason"]["concept"]["text"] == "the source could not be reached (timeout)"
    assert took < 3


def one_byte_at_a_time():
    yield PART_HEAD
    while True:
        yield b"\x5a"


@pytest.mark.timeout(60)
def test_the_idle_timeout_fires_against_a_part_dripping_slower_than_it(tmp_path):
    route = pixel_source(one_byte_at_a_time, pause=2.0)
    status, task, took, site = run_task(tmp_path, route, read_timeout=0.5, min_throughput=0)
    assert status == "failed"
    # 1 series request and 3 attempts at each of 2 instances, each ended by the 0.5 s idle timeout.
    assert took < 7 * 0.5 + 3
    details = [o.get("valueString", "") for o in task.get("output", [])]
    assert any("timed out" in detail.lower() for detail in details), details
    assert staging_files(site) == []


def test_a_deadline_at_or_past_the_job_timeout_is_refused():
    with pytest.raises(ValidationError, match="task_deadline"):
        TransferSettingsSchema().load({"task_deadline": 3600, "job_timeout": 3600})
    assert TransferSettingsSchema().load({})["task_deadline"] < TransferSettingsSchema().load({})["job_timeout"]


def test_the_transfer_example_configuration_is_valid_and_lists_every_key():
    import tomllib
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "config" / "transfer.example.toml"
    section = tomllib.loads(example.read_text())["transfer"]
    loaded = TransferSettingsSchema().load(section)
    assert set(TransferSettingsSchema().fields) == set(section) | {"endpoints", "rules"}
    assert loaded["max_instance_bytes"] == 4 << 30 and loaded["max_task_bytes"] == 64 << 30
