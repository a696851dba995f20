"""Issue 15, item 9: an endless multipart part made the worker write 10 x 2 GiB of staging for
one Task in 40 s. A part is cut at the size the instance's metadata announced (or at
max_instance_bytes, shared by all the attempts at one instance) and rejected without being
asked for again; the Task stops at a byte budget derived from what its study announces."""
from __future__ import annotations

import io
import threading
import time

import pytest

from fhirimg.transfer import budget, multipart
from fhirimg.transfer.budget import ByteBudget, announced_size, part_allowance
from fhirimg.transfer.guard import OverBudget
from fhirimg.transfer.tasks import run_retrieve

from ..transfer.dicomfactory import make_study
from ..transfer.scripted_server import ScriptedServer
from ..transfer.site import make_site
from ..transfer.test_hostile_source import rejection_reasons
from .hostile_sources import (PART_HEAD, StagingMeter, endless_junk_parts, endless_part, hostile_source,
                              send_until, staging_files, start_body)

MiB = 1 << 20
ROWS = COLUMNS = 16
# What the metadata of each test instance announces, computed here from its geometry:
# 16 x 16 pixels of one 16-bit sample, one frame with its per-frame header allowance.
ANNOUNCED = ROWS * COLUMNS * 2 + budget.FRAME_HEADER_BYTES


def pixel_body(pieces, stop: threading.Event, described: threading.Event, seconds: float = 20.0):
    """A pixel-data answer sent once the metadata was asked for (so that its sizes are known)."""
    def body(handler):
        described.wait(5)
        time.sleep(0.3)  # the worker has parsed the metadata by then
        start_body(handler)
        send_until(handler, pieces(), stop, seconds)
    return body


def described_when_metadata_served(route, described: threading.Event):
    def wrapped(handler):
        answer = route(handler)
        if handler.path.split("?")[0].endswith("/metadata"):
            described.set()
        return answer
    return wrapped


def run_hostile(tmp_path, pieces, geometry: bool = True, **settings):
    """Run one retrieve Task against a source answering every pixel request with ``pieces``."""
    study = make_study(series=1, instances=2, rows=ROWS, columns=COLUMNS, seed=91)
    stop, described = threading.Event(), threading.Event()
    route = hostile_source(study, pixel_body(pieces, stop, described), stop, geometry)
    with ScriptedServer([described_when_metadata_served(route, described)]) as source:
        site = make_site(tmp_path, max_retries=0, **settings)
        task_id = site.start_retrieve(site.add_study(f"{source.url}/dicom-web", study.study_uid))
        try:
            status = run_retrieve(task_id, site.context())
        finally:
            stop.set()
    pixel_requests = [r for r in source.requests if r["path"].split("?")[0].rsplit("/", 2)[-2] in
                      ("series", "instances")]
    return status, site, site.task(task_id), pixel_requests


@pytest.mark.timeout(60)
def test_an_endless_part_is_cut_at_the_size_its_metadata_announced_and_not_asked_again(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "PART_HEADER_BYTES", 64 * 1024)  # the same rule, a smaller header room
    meter = StagingMeter(monkeypatch)
    status, site, task, pixel_requests = run_hostile(tmp_path, endless_part, max_instance_bytes=64 * MiB)
    allowance = ANNOUNCED * 3 // 2 + 64 * 1024
    assert status == "failed"
    assert rejection_reasons(task).count("too-large") == 2
    assert len(pixel_requests) == 3  # the series, then each instance once: not three attempts each
    assert meter.bytes <= 3 * allowance  # before: 7 x 64 MiB (each part cut at max_instance_bytes)
    assert staging_files(site) == []


def breaking_off_after(size: int):
    """Each answer: a part of junk that breaks off after ``size`` bytes (the connection closes)."""
    def pieces():
        yield PART_HEAD
        yield b"\x5a" * size
    return pieces


@pytest.mark.timeout(60)
def test_without_an_announced_size_the_attempts_at_an_instance_share_max_instance_bytes(tmp_path, monkeypatch):
    meter = StagingMeter(monkeypatch)
    status, site, task, pixel_requests = run_hostile(tmp_path, breaking_off_after(3 * MiB), geometry=False,
                                                     max_instance_bytes=4 * MiB)
    assert status == "failed"
    assert rejection_reasons(task).count("too-large") == 2  # the second attempt passed the 4 MiB left
    assert len(pixel_requests) == 1 + 2 * 2
    assert meter.bytes <= 3 * MiB + 2 * 4 * MiB  # before: 3 MiB x (1 + 2 x 3 attempts) = 21 MiB
    assert staging_files(site) == []


@pytest.mark.timeout(60)
def test_endless_junk_parts_stop_at_the_study_byte_budget(tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "TASK_SLACK", 1 * MiB)  # the same rule, a smaller slack
    meter = StagingMeter(monkeypatch)
    status, site, task, pixel_requests = run_hostile(tmp_path, lambda: endless_junk_parts(200_000))
    limit = 2 * 2 * ANNOUNCED + 1 * MiB  # twice what the two instances announce, plus the slack
    assert status == "failed"
    assert task["statusReason"]["concept"]["text"] == OverBudget.reason
    assert meter.bytes <= limit  # before: the worker kept writing until the source stopped
    assert len(pixel_requests) == 1
    assert staging_files(site) == []


@pytest.mark.timeout(60)
def test_the_byte_budget_is_capped_by_max_task_bytes(tmp_path, monkeypatch):
    meter = StagingMeter(monkeypatch)
    status, site, task, _ = run_hostile(tmp_path, lambda: endless_junk_parts(200_000), geometry=False,
                                        max_task_bytes=2 * MiB)
    assert status == "failed" and task["statusReason"]["concept"]["text"] == OverBudget.reason
    assert meter.bytes <= 2 * MiB
    assert staging_files(site) == []


def test_announced_size_is_the_pixel_data_with_its_per_frame_headers():
    metadata = {"00280010": {"vr": "US", "Value": [512]}, "00280011": {"vr": "US", "Value": [512]},
                "00280100": {"vr": "US", "Value": [16]}, "00280002": {"vr": "US", "Value": [1]},
                "00280008": {"vr": "IS", "Value": ["30"]}}
    assert announced_size(metadata) == 30 * (512 * 512 * 2 + 16 * 1024)
    bit_packed = {**metadata, "00280100": {"vr": "US", "Value": [1]}, "00280008": {"vr": "IS", "Value": ["3"]}}
    assert announced_size(bit_packed) == (3 * 512 * 512 + 7) // 8 + 3 * 16 * 1024


def test_an_instance_without_pixel_geometry_announces_nothing_and_gets_the_configured_maximum():
    report = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.11"]}}
    assert announced_size(report) is None
    assert part_allowance(None, 4 << 30) == 4 << 30
    assert part_allowance(10**12, 4 << 30) == 4 << 30  # a lying announcement is still capped


def test_the_budget_follows_what_the_instances_announce():
    limits = ByteBudget(max_instance_bytes=100 * MiB, max_task_bytes=10 << 30)
    limits.announce("1.1", None)  # listed by QIDO, metadata not yet there: the configured maximum
    assert limits.limit() == 2 * 100 * MiB + budget.TASK_SLACK
    limits.announce("1.1", 5 * MiB)
    assert limits.limit() == 2 * 5 * MiB + budget.TASK_SLACK
    assert limits.charge(2 * 5 * MiB + budget.TASK_SLACK) and not limits.charge(1)


def test_a_part_longer_than_its_own_content_length_is_cut_there():
    sink = io.BytesIO()
    reader = multipart.MultipartReader("zz", lambda headers: sink)
    body = b"--zz\r\nContent-Type: application/dicom\r\nContent-Length: 10\r\n\r\n" + b"x" * 100
    with pytest.raises(multipart.PartTooLarge):
        list(reader.read([body[:70], body[70:]]))
    assert len(sink.getvalue()) <= 10


@pytest.mark.timeout(60)
def test_an_answer_brings_no_more_parts_than_the_instances_asked_for_and_a_few(tmp_path, monkeypatch):
    # Tiny junk parts: the byte budget would allow millions, each a staging file and a rejection.
    meter = StagingMeter(monkeypatch)
    status, site, task, pixel_requests = run_hostile(tmp_path, lambda: endless_junk_parts(100))
    assert status == "failed"
    # The series answer, then 3 attempts at each instance, each cut after 8 parts beyond those asked for.
    assert len(pixel_requests) == 1 + 2 * 3
    reasons = rejection_reasons(task)
    assert reasons.count("not-dicom") <= (2 + 8) + 2 * 3 * (1 + 8)  # before: until the source stopped
    assert reasons.count("not-retrieved") == 2
    assert meter.bytes < 100 * 100
    assert staging_files(site) == []
