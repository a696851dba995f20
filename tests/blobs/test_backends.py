"""The blob store on both backends, with identical expectations: the local file system and
S3 (a private SeaweedFS). Placement, reading back by ranges, duplicates and races, deletion,
listing; and fhirimg's DICOMweb pushed into and served from each."""
from __future__ import annotations

import io
import threading

import pydicom
import pytest

from fhirimg.app import create_app
from fhirimg.blobs.objects import ObjectConflict, Placement
from fhirimg.blobs.settings import BlobsSchema
from fhirimg.config import load_config
from fhirimg.transfer.blobstore import BlobStore
from fhirimg.transfer.dicomcheck import Expectation, inspect_part10

from ..auth_support import ANONYMOUS
from ..stow.conftest import multipart
from ..transfer.dicomfactory import make_study

def s3_settings(seaweed, bucket: str, **extra) -> dict:
    return BlobsSchema().load({"backend": "s3", "s3": {
        "endpoint": seaweed.endpoint, "bucket": bucket, "region": seaweed.region, "prefix": "archive",
        "access_key": seaweed.access_key, "secret_key": seaweed.secret_key, **extra}})


def staged(store: BlobStore, data: bytes, study: str, series: str, sop: str):
    file = store.open_staging()
    file.write(data)
    return file, inspect_part10(file.path, Expectation(study, series, frozenset([sop])))


def study_items(store: BlobStore, study) -> list:
    return [staged(store, data, study.study_uid, series.series_uid, sop)
            for series in study.series for sop, data in series.instances.items()]


def read(store: BlobStore, key: str) -> bytes:
    with store.open(key) as fh:
        return fh.read()


def test_placed_objects_read_back_byte_for_byte_and_by_ranges(store_factory):
    store = store_factory()
    study = make_study(series=2, instances=2, rows=32, columns=32, seed=51)
    placed = store.commit_many(study_items(store, study))
    assert {r.sop_uid: read(store, r.path) for r in placed} == study.instances
    record = placed[0]
    with store.open(record.path) as fh:
        fh.seek(132)
        assert fh.read(4) == study.instances[record.sop_uid][132:136]
        fh.seek(record.size - 10)
        assert fh.read() == study.instances[record.sop_uid][-10:]
    assert store.objects.size(record.path) == record.size and store.objects.size("1.2/3.4/5.dcm") is None
    assert sorted(key for key, _ in store.objects.keys()) == sorted(r.path for r in placed)
    assert list(store.staging.iterdir()) == []


def test_the_same_bytes_again_succeed_and_other_bytes_need_leave(store_factory):
    store = store_factory()
    study = make_study(series=1, instances=1, rows=32, columns=32, seed=52)
    [(sop, data)] = study.instances.items()
    [first] = store.commit_many(study_items(store, study))
    [again] = store.commit_many(study_items(store, study))  # a retry: the same bytes, nothing to refuse
    assert again.path == first.path and read(store, first.path) == data
    other = make_study(series=1, instances=1, rows=32, columns=32, seed=53)
    other_data = next(iter(other.instances.values()))
    file = store.open_staging()
    file.write(other_data)
    file.finish()
    import hashlib
    digest = hashlib.sha256(other_data).hexdigest()
    with pytest.raises(ObjectConflict):
        store.objects.put_many([Placement(file.path, first.path, digest, len(other_data), replace=False)])
    assert read(store, first.path) == data
    store.objects.put_many([Placement(file.path, first.path, digest, len(other_data), replace=True)])
    assert read(store, first.path) == other_data


def test_racing_uploads_of_one_instance_leave_one_object_and_one_row(store_factory):
    store = store_factory()
    study = make_study(series=1, instances=1, rows=64, columns=64, seed=54)
    [(sop, data)] = study.instances.items()
    errors = []

    def place():
        try:
            store.commit_many(study_items(store, study))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=place) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [key for key, _ in store.objects.keys()] == [store.relative_path(study.study_uid,
                                                                            study.series[0].series_uid, sop)]
    assert store.stored_sop_uids(study.study_uid) == {sop}
    assert read(store, next(store.objects.keys())[0]) == data


def test_a_large_object_goes_in_parts_and_frames_come_back_as_ranges(store_factory):
    store = store_factory(single_put_max=1 << 20)
    study = make_study(series=1, instances=1, rows=1024, columns=1024, seed=55)  # 2 MiB: multipart on S3
    [(sop, data)] = study.instances.items()
    [record] = store.commit_many(study_items(store, study))
    assert read(store, record.path) == data
    from fhirimg.dicomweb import index, negotiate, wado
    [instance] = index.stored_instances(store.engine, study.study_uid)
    _, frames = wado.read_frames(store.open, instance, [1], negotiate.frame_choices(""))
    assert [frame.data for frame in frames] == [pydicom.dcmread(io.BytesIO(data)).PixelData]


def test_delete_removes_the_object(store_factory):
    store = store_factory()
    study = make_study(series=1, instances=1, rows=32, columns=32, seed=56)
    [record] = store.commit_many(study_items(store, study))
    store.delete(record.path)
    store.delete(record.path)  # absent: no error
    assert store.objects.size(record.path) is None


# -- the server on each backend -------------------------------------------------------------
@pytest.fixture
def app_on(kept_in, database, engine, tmp_path, request):
    settings = {"database_url": database[0], "var_dir": str(tmp_path / "var"), "auth": ANONYMOUS}
    if kept_in == "s3":
        seaweed, bucket = request.getfixturevalue("seaweed"), request.getfixturevalue("bucket")
        settings["blobs"] = {"backend": "s3", "s3": {
            "endpoint": seaweed.endpoint, "bucket": bucket, "region": seaweed.region,
            "access_key": seaweed.access_key, "secret_key": seaweed.secret_key}}
    return create_app(load_config(env={}, read_files=False, overrides=settings), engine=engine)


def test_pushed_images_are_served_from_the_backend(app_on, kept_in):
    client = app_on.test_client()
    study = make_study(series=1, instances=3, rows=64, columns=64, seed=57)
    body, content_type = multipart(list(study.instances.values()))
    assert client.post("/dicom-web/studies", data=body, headers={"Content-Type": content_type}).status_code == 200
    assert app_on.extensions["fhirimg.blobstore"].objects.kind == kept_in
    series = study.series[0]
    answer = client.get(f"/dicom-web/studies/{study.study_uid}",
                        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert answer.status_code == 200
    for sop, data in series.instances.items():
        assert data in answer.data
        frames = client.get(f"/dicom-web/studies/{study.study_uid}/series/{series.series_uid}/instances/{sop}"
                            "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"})
        assert frames.status_code == 200 and pydicom.dcmread(io.BytesIO(data)).PixelData in frames.data
    if kept_in == "s3":
        assert not list((app_on.extensions["fhirimg.blobstore"].root).glob("1*"))  # nothing kept locally
