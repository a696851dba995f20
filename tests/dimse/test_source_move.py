"""Retrieve Tasks over C-MOVE: the source sends to our own AE title, fhirimg's C-STORE listener
stores what arrives, and the Task completes when the index holds what was asked for.

Orthanc plays a PACS that will not let our node C-GET (it aborts the association, as
Orthanc does for a modality without AllowGet), so the worker falls back to C-MOVE by itself.
"""
from __future__ import annotations

import pytest

import fhirimg.dimse.settings  # noqa: F401 - registers the [dicom] section
import fhirimg.push.settings  # noqa: F401 - registers the [push] section
import fhirimg.transfer.settings  # noqa: F401 - registers the [transfer] section
from fhirimg.app import create_app
from fhirimg.config import load_config
from fhirimg.dimse.scu import ScuSettings
from fhirimg.transfer.taskoutput import output_value
from fhirimg.transfer.tasks import run_retrieve

from ..services import free_port
from ..transfer.dicomfactory import make_study
from ..transfer.site import FAST_RETRIES, Site
from .orthanc_dimse import OrthancDicomServer
from .test_source_orthanc import add_dimse_study, orthanc_file, split_part10, stored_files

OUR_AE = "FHIRIMG"


@pytest.fixture(scope="module")
def listener_port():
    return free_port()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, listener_port):
    """Orthanc that knows our node for C-MOVE but refuses it C-GET."""
    server = OrthancDicomServer(tmp_path_factory.mktemp("orthanc-move"), extra={
        "DicomAlwaysAllowGet": False,
        "DicomModalities": {"fhirimg": {"AET": OUR_AE, "Host": "127.0.0.1", "Port": listener_port,
                                        "AllowGet": False}}})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def moved_study(pacs):
    study = make_study(series=2, instances=3, rows=64, columns=64, seed=175)
    pacs.upload_study(study)
    return study


@pytest.fixture
def site(tmp_path, listener_port):
    """A site whose [dicom] node is our AE title, with Orthanc on its callers list, listening."""
    from fhirimg.dimse.listener import Listener
    config = load_config(env={}, read_files=False, overrides={
        "database_url": f"sqlite:///{tmp_path / 'site.db'}", "var_dir": str(tmp_path / "var"), "redis_url": "",
        "base_url": "http://fhirimg.test/fhir", "transfer": {"allow_loopback": True, **FAST_RETRIES},
        "dicom": {"ae_title": OUR_AE, "callers": [{"ae_title": "ORTHANC", "hosts": ["127.0.0.1"]}]}})
    listener = Listener(config)
    listener.start("127.0.0.1", listener_port)
    yield Site(config, create_app(config))
    listener.stop(grace=2)


def run(site, study_id: str, settings: ScuSettings | None = None) -> dict:
    task_id = site.start_retrieve(study_id)
    context = site.context()
    context.dimse = settings or ScuSettings(ae_title=OUR_AE)
    run_retrieve(task_id, context)
    return site.task(task_id)


def test_a_source_that_refuses_c_get_is_retrieved_by_c_move_to_our_listener(site, pacs, moved_study):
    study_id = add_dimse_study(site, f"dicom://ORTHANC@127.0.0.1:{pacs.dicom_port}", moved_study.study_uid)
    task = run(site, study_id)
    assert task["status"] == "completed", task.get("statusReason")
    assert output_value(task, "instances-expected") == 6 and output_value(task, "instances-retrieved") == 6
    files = stored_files(site)
    assert int(output_value(task, "bytes-retrieved")) == sum(len(data) for data in files.values())
    assert output_value(task, "duration-retrieve") > 0 and output_value(task, "time-to-first-instance") > 0
    assert set(files) == set(moved_study.instances)
    for sop_uid, ours in files.items():
        assert split_part10(ours)[1] == split_part10(orthanc_file(pacs, sop_uid))[1]
    study = site.client.get(f"/fhir/ImagingStudy/{study_id}").json
    assert study["numberOfInstances"] == 6 and len(study["series"]) == 2


def test_a_resumed_c_move_asks_only_for_the_missing_instances(site, pacs, moved_study):
    first = moved_study.series[0]
    held = make_study(series=0)
    held.study_uid, held.series = moved_study.study_uid, [type(first)(first.series_uid, first.modality,
                                                                      dict(list(first.instances.items())[:2]))]
    site.store(held)
    task = run(site, add_dimse_study(site, f"dicom://ORTHANC@127.0.0.1:{pacs.dicom_port}", moved_study.study_uid),
               ScuSettings(ae_title=OUR_AE, retrieve="move"))  # no C-GET attempt first: exact request counts
    assert task["status"] == "completed", task.get("statusReason")
    assert output_value(task, "instances-skipped") == 2 and output_value(task, "instances-retrieved") == 4
    # The second series whole; of the first, the one missing instance by an IMAGE-level UID list.
    assert output_value(task, "series-requests") == 1 and output_value(task, "instance-requests") == 1


def test_a_move_to_an_ae_the_source_does_not_know_fails_with_its_status(site, pacs, moved_study):
    study_id = add_dimse_study(site, f"dicom://ORTHANC@127.0.0.1:{pacs.dicom_port}", moved_study.study_uid)
    task = run(site, study_id, ScuSettings(ae_title="NOBODY", retrieve="move"))
    assert task["status"] == "failed"
    assert task["statusReason"]["concept"]["text"] == "6 of 6 instances could not be retrieved"
    rejected = [o["valueString"] for o in task["output"] if o["type"]["coding"][0]["code"] == "rejected"]
    # Orthanc 1.10 answers 0xC000 "unable to process" (PS3.4 would have 0xA801, destination unknown).
    assert len(rejected) == 6 and all("C-MOVE ended with status 0xC000, Unable to Process (0 completed" in text
                                      for text in rejected), rejected
    assert stored_files(site) == {}
