"""The three steps against a real Orthanc, directly and through a fault-injecting proxy."""
from __future__ import annotations

import hashlib

import pydicom
import pytest
import requests

from fhirimg.transfer.client import ClientSettings, SourceError, TransferClient
from fhirimg.transfer.pipeline import transfer_study
from fhirimg.transfer.retrieve import RetrieveOptions

from .dicomfactory import make_study
from .faultproxy import Fault
from .multipart_reference import reference_parts


@pytest.fixture(scope="module")
def uploaded_study(orthanc):
    study = make_study(series=3, instances=6, rows=128, columns=128, seed=11)
    orthanc.upload_study(study)
    return study


def make_client(**overrides) -> TransferClient:
    settings = ClientSettings(allow_loopback=True, backoff_base=0.01, backoff_max=0.05,
                              retry_after_max=0.2, read_timeout=10, **overrides)
    return TransferClient(settings)


def served_by_orthanc(orthanc, study) -> dict[str, bytes]:
    """What Orthanc serves for the study, read independently with a whole-body parser."""
    out = {}
    for series in study.series:
        url = f"{orthanc.dicomweb}/studies/{study.study_uid}/series/{series.series_uid}"
        response = requests.get(url, headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                        'transfer-syntax=*'}, timeout=30)
        for payload in reference_parts(response.content, response.headers["Content-Type"]):
            out[pydicom.dcmread(__import__("io").BytesIO(payload)).SOPInstanceUID] = payload
    return out


def stored_files(blobstore) -> dict[str, bytes]:
    return {path.stem: path.read_bytes() for path in blobstore.root.rglob("*.dcm")}


def test_study_is_retrieved_byte_identical_and_pixel_identical(orthanc, uploaded_study, blobstore):
    report = transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid,
                            RetrieveOptions(series_parallelism=3))
    assert report.missing == set() and report.outcome.rejections == []
    files = stored_files(blobstore)
    assert files == served_by_orthanc(orthanc, uploaded_study)
    for sop, uploaded in uploaded_study.instances.items():
        ours = pydicom.dcmread(__import__("io").BytesIO(files[sop]))
        theirs = pydicom.dcmread(__import__("io").BytesIO(uploaded))
        assert ours.PixelData == theirs.PixelData
    assert report.outcome.series_requests == 3 and report.outcome.instance_requests == 0
    assert report.outcome.study_requests == 0  # a source on loopback: parallel series streams
    assert set(report.durations) == {"qido", "metadata", "retrieve"}
    modalities = {s.series_uid: s.modality for s in report.study.series}
    assert modalities == {s.series_uid: s.modality for s in uploaded_study.series}


def test_index_rows_carry_the_sha256_of_the_file(orthanc, uploaded_study, blobstore, engine):
    transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid, RetrieveOptions())
    from fhirimg.transfer.schema import dicom_instance
    with engine.connect() as conn:
        rows = conn.execute(dicom_instance.select()).all()
    assert len(rows) == 18
    for row in rows:
        assert hashlib.sha256(blobstore.absolute_path(row.path).read_bytes()).hexdigest() == row.sha256


def test_second_run_skips_everything_already_stored(orthanc, uploaded_study, blobstore):
    transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid, RetrieveOptions())
    report = transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid,
                            RetrieveOptions())
    assert report.outcome.skipped == 18 and report.outcome.stored == 0
    assert report.outcome.series_requests == 0 and report.outcome.instance_requests == 0


def test_resume_fetches_only_the_missing_instances_one_by_one(orthanc, uploaded_study, blobstore, engine):
    transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid, RetrieveOptions())
    lost = sorted(uploaded_study.series[1].instances)[:2]
    from fhirimg.transfer.schema import dicom_instance
    with engine.begin() as conn:
        conn.execute(dicom_instance.delete().where(dicom_instance.c.sop_uid.in_(lost)))
    report = transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid,
                            RetrieveOptions())
    assert report.outcome.stored == 2 and report.outcome.instance_requests == 2
    assert report.missing == set()


def test_throttling_with_retry_after_is_survived(fault_proxy, uploaded_study, blobstore):
    fault_proxy.add(Fault("status", r"/series\?", times=1, status=429, retry_after="0"))
    fault_proxy.add(Fault("status", r"/series/[0-9.]+$", times=2, status=429, retry_after="0"))
    fault_proxy.add(Fault("status", r"/metadata$", times=1, status=503, retry_after="0"))
    fault_proxy.add(Fault("status", r"/instances\?", times=1, status=503, retry_after=None))
    client = make_client()
    report = transfer_study(client, blobstore, fault_proxy.dicomweb, uploaded_study.study_uid, RetrieveOptions())
    assert report.missing == set() and report.outcome.stored == 18
    assert client.retries == 5
    assert sum(1 for _, what in fault_proxy.log if what.startswith("status")) == 5


def test_connection_dropped_mid_part_falls_back_to_per_instance(fault_proxy, orthanc, uploaded_study, blobstore):
    series_uid = uploaded_study.series[0].series_uid
    # 3.5 instances of ~33 kB into the series body the connection is reset.
    fault_proxy.add(Fault("drop", rf"/series/{series_uid}$", times=1, after_bytes=120_000))
    report = transfer_study(make_client(), blobstore, fault_proxy.dicomweb, uploaded_study.study_uid,
                            RetrieveOptions())
    assert report.missing == set()
    assert report.outcome.fallbacks == 1 and report.outcome.instance_requests >= 2
    assert stored_files(blobstore) == served_by_orthanc(orthanc, uploaded_study)
    assert list(blobstore.staging.iterdir()) == []


def test_truncated_series_body_is_detected_and_completed(fault_proxy, orthanc, uploaded_study, blobstore):
    series_uid = uploaded_study.series[2].series_uid
    fault_proxy.add(Fault("truncate", rf"/series/{series_uid}$", times=1, after_bytes=70_000))
    fault_proxy.add(Fault("truncate", r"/instances/", times=1, after_bytes=1000))
    report = transfer_study(make_client(), blobstore, fault_proxy.dicomweb, uploaded_study.study_uid,
                            RetrieveOptions())
    assert report.missing == set() and report.outcome.fallbacks == 1
    assert stored_files(blobstore) == served_by_orthanc(orthanc, uploaded_study)
    assert list(blobstore.staging.iterdir()) == []


# A far source gets a first transfer as one study stream (RetrieveOptions.stream_study_rtt);
# 0 makes the loopback Orthanc count as far.
STREAM = RetrieveOptions(stream_study_rtt=0)


def test_study_stream_retrieves_the_study_in_one_request(orthanc, uploaded_study, blobstore):
    report = transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid, STREAM)
    assert report.missing == set() and report.outcome.rejections == []
    assert (report.outcome.study_requests, report.outcome.series_requests, report.outcome.instance_requests) == (1, 0, 0)
    assert stored_files(blobstore) == served_by_orthanc(orthanc, uploaded_study)
    assert list(blobstore.staging.iterdir()) == []
    from fhirimg.transfer.taskoutput import report_outputs, output_value
    assert output_value({"output": report_outputs(report)}, "study-requests") == 1


def test_study_stream_is_not_used_to_resume(orthanc, uploaded_study, blobstore, engine):
    """A study partly held is completed series by series: a stream would bring it all again."""
    transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid, STREAM)
    lost = sorted(uploaded_study.series[0].instances)
    from fhirimg.transfer.schema import dicom_instance
    with engine.begin() as conn:
        conn.execute(dicom_instance.delete().where(dicom_instance.c.sop_uid.in_(lost)))
    report = transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid, STREAM)
    assert report.outcome.study_requests == 0 and report.outcome.series_requests == 1
    assert report.outcome.stored == len(lost) and report.missing == set()


@pytest.mark.parametrize("pending_parts", [64, 4])
def test_study_stream_reads_on_while_the_listing_is_slow(fault_proxy, orthanc, uploaded_study, blobstore,
                                                         monkeypatch, pending_parts):
    """Parts that arrive before step 1 has listed the series are checked and kept aside, then
    matched with the listing; past PENDING_PARTS the stream waits for it."""
    from fhirimg.transfer import retrieve
    monkeypatch.setattr(retrieve, "PENDING_PARTS", pending_parts)
    fault_proxy.add(Fault("slow", r"/instances\?", times=3, delay=0.4))
    report = transfer_study(make_client(), blobstore, fault_proxy.dicomweb, uploaded_study.study_uid, STREAM)
    assert report.missing == set() and report.outcome.rejections == []
    assert (report.outcome.study_requests, report.outcome.series_requests, report.outcome.instance_requests) == (1, 0, 0)
    assert stored_files(blobstore) == served_by_orthanc(orthanc, uploaded_study)
    assert list(blobstore.staging.iterdir()) == []


def test_study_stream_dropped_mid_part_is_completed_series_by_series(fault_proxy, orthanc, uploaded_study, blobstore):
    fault_proxy.add(Fault("drop", rf"/studies/{uploaded_study.study_uid}$", times=1, after_bytes=250_000))
    report = transfer_study(make_client(), blobstore, fault_proxy.dicomweb, uploaded_study.study_uid, STREAM)
    assert report.missing == set() and report.outcome.rejections == []
    assert report.outcome.study_requests == 1
    assert report.outcome.series_requests + report.outcome.instance_requests >= 1
    assert report.outcome.stored == 18
    assert stored_files(blobstore) == served_by_orthanc(orthanc, uploaded_study)
    assert list(blobstore.staging.iterdir()) == []


def test_study_stream_refused_by_the_source_falls_back_to_series(fault_proxy, orthanc, uploaded_study, blobstore):
    fault_proxy.add(Fault("status", rf"/studies/{uploaded_study.study_uid}$", times=1, status=406, retry_after=None))
    report = transfer_study(make_client(), blobstore, fault_proxy.dicomweb, uploaded_study.study_uid, STREAM)
    assert report.missing == set() and report.outcome.rejections == []
    assert (report.outcome.study_requests, report.outcome.series_requests) == (1, 3)
    assert stored_files(blobstore) == served_by_orthanc(orthanc, uploaded_study)


def test_study_stream_of_a_study_the_source_does_not_list(orthanc, blobstore):
    report = transfer_study(make_client(), blobstore, orthanc.dicomweb, "1.2.3.999.42", STREAM)
    assert report.study.series == [] and report.outcome.stored == 0 and report.outcome.rejections == []
    assert list(blobstore.staging.iterdir()) == []


def test_study_stream_with_a_failing_listing_fails_the_transfer_without_hanging(fault_proxy, uploaded_study,
                                                                                 blobstore):
    series_uid = uploaded_study.series[1].series_uid
    fault_proxy.add(Fault("status", rf"/series/{series_uid}/instances\?", times=20, status=500, retry_after=None))
    with pytest.raises(SourceError):
        transfer_study(make_client(max_retries=1), blobstore, fault_proxy.dicomweb, uploaded_study.study_uid, STREAM)
    assert list(blobstore.staging.iterdir()) == []


def test_study_stream_is_released_when_planning_fails(orthanc, uploaded_study, blobstore, monkeypatch):
    """An error between step 1 and the stream's listing (here: the database, planning) ends
    the transfer with that error; the stream waiting for the listing is told, not left waiting."""
    from fhirimg.transfer import retrieve

    def broken_plan(*args, **kwargs):
        raise OSError(5, "database is locked")
    monkeypatch.setattr(retrieve.Retriever, "plan_series", broken_plan)
    with pytest.raises(OSError, match="database is locked"):
        transfer_study(make_client(), blobstore, orthanc.dicomweb, uploaded_study.study_uid, STREAM)
    assert list(blobstore.staging.iterdir()) == []
