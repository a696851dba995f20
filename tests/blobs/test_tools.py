"""verify, fsck and migrate on both backends, and the commands that run them."""
from __future__ import annotations

import hashlib

import pytest
from click.testing import CliRunner
from sqlalchemy import delete, select

from fhirimg.blobs import tools
from fhirimg.blobs.objects import Placement
from fhirimg.blobs.s3 import S3Objects
from fhirimg.store import Repository
from fhirimg.transfer.blobstore import BlobStore
from fhirimg.transfer.schema import active_retrieve, dicom_instance

from ..transfer.dicomfactory import make_study
from .test_backends import s3_settings, study_items


def overwrite(store: BlobStore, key: str, data: bytes, tmp_path) -> None:
    """Change an object behind the index's back (what a failing disk or a hand edit does)."""
    path = tmp_path / "evil.dcm"
    path.write_bytes(data)
    store.objects.put_many([Placement(path, key, hashlib.sha256(data).hexdigest(), len(data), replace=True)])


def test_verify_finds_a_changed_object_and_a_missing_one(store_factory, tmp_path):
    store = store_factory()
    study = make_study(series=1, instances=3, rows=32, columns=32, seed=61)
    placed = store.commit_many(study_items(store, study))
    assert tools.verify(store).clean and tools.verify(store, study.study_uid).ok == 3
    changed, gone = placed[0], placed[1]
    data = study.instances[changed.sop_uid]
    overwrite(store, changed.path, data[:-1] + bytes([data[-1] ^ 1]), tmp_path)
    store.delete(gone.path)
    report = tools.verify(store)
    assert report.ok == 1 and len(report.problems) == 2
    assert any(changed.path in p and "sha256" in p for p in report.problems)
    assert any(gone.path in p and "missing" in p for p in report.problems)


def test_fsck_indexes_a_valid_unindexed_object_and_leaves_junk_alone(store_factory, tmp_path, engine):
    store = store_factory()
    study = make_study(series=1, instances=2, rows=32, columns=32, seed=62)
    placed = store.commit_many(study_items(store, study))
    orphan = placed[0]
    with engine.begin() as conn:  # a crash between the object's put and its row
        conn.execute(delete(dicom_instance).where(dicom_instance.c.sop_uid == orphan.sop_uid))
    overwrite(store, "1.2.3/4.5.6/7.8.9.dcm", b"not dicom", tmp_path)
    report = tools.fsck(store, Repository(engine), repair=False)
    assert len(report.problems) == 2
    assert store.stored_sop_uids(study.study_uid) == {placed[1].sop_uid}
    report = tools.fsck(store, Repository(engine), repair=True)
    assert f"{orphan.path}: indexed" in report.actions
    assert store.stored_sop_uids(study.study_uid) == {r.sop_uid for r in placed}
    with engine.connect() as conn:
        row = conn.execute(select(dicom_instance).where(dicom_instance.c.sop_uid == orphan.sop_uid)).one()
    assert row.sha256 == orphan.sha256 and row.size == orphan.size
    assert store.objects.size("1.2.3/4.5.6/7.8.9.dcm") is not None  # never deleted by fsck


def test_fsck_drops_rows_of_lost_objects_and_starts_the_studys_retrieve(store_factory, engine):
    store = store_factory()
    study = make_study(series=1, instances=2, rows=32, columns=32, seed=63)
    placed = store.commit_many(study_items(store, study))
    repo = Repository(engine)
    endpoint = repo.create("Endpoint", {"resourceType": "Endpoint", "status": "active",
                                        "connectionType": [{"coding": [{"code": "dicom-wado-rs"}]}],
                                        "address": "http://pacs.example.org/dicom-web"})
    patient = repo.create("Patient", {"resourceType": "Patient"})
    imaging = repo.create("ImagingStudy", {
        "resourceType": "ImagingStudy", "status": "available", "subject": {"reference": f"Patient/{patient.res_id}"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study.study_uid}"}],
        "endpoint": [{"reference": f"Endpoint/{endpoint.res_id}"}]})
    store.delete(placed[0].path)
    report = tools.fsck(store, repo, repair=True)
    assert any("retrieve Task/" in a for a in report.actions)
    assert store.stored_sop_uids(study.study_uid) == {placed[1].sop_uid}
    with engine.connect() as conn:
        assert [r.study_id for r in conn.execute(select(active_retrieve))] == [imaging.res_id]


def test_migrate_copies_the_archive_to_the_bucket_and_resumes(tmp_path, engine, seaweed, bucket):
    files = BlobStore(tmp_path / "blobs", engine)
    study = make_study(series=2, instances=3, rows=32, columns=32, seed=64)
    placed = files.commit_many(study_items(files, study))
    bucket_objects = S3Objects.from_settings(s3_settings(seaweed, bucket)["s3"])
    first = tools.migrate(files, bucket_objects)
    assert first.clean and first.ok == 6
    again = tools.migrate(files, bucket_objects)  # interrupted and run again: nothing to redo, nothing refused
    assert again.clean and again.ok == 6
    on_s3 = BlobStore(tmp_path / "blobs", engine, objects=bucket_objects)
    assert tools.verify(on_s3).ok == 6
    for record in placed:
        with on_s3.open(record.path) as fh:
            assert fh.read() == study.instances[record.sop_uid]


@pytest.mark.parametrize("command", [["verify"], ["fsck"]])
def test_the_commands_exit_nonzero_on_a_problem(command, tmp_path, monkeypatch):
    from fhirimg.blobs.cli import blobs
    from fhirimg.store import create_schema, make_engine
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(url)
    create_schema(engine)
    store = BlobStore(tmp_path / "var" / "blobs", engine)
    study = make_study(series=1, instances=1, rows=32, columns=32, seed=65)
    [record] = store.commit_many(study_items(store, study))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", url)
    monkeypatch.setenv("FHIRIMG_VAR_DIR", str(tmp_path / "var"))
    ok = CliRunner().invoke(blobs, command)
    assert ok.exit_code == 0, ok.output
    store.delete(record.path)
    broken = CliRunner().invoke(blobs, command)
    assert broken.exit_code == 1 and record.path in broken.output
