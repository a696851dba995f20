"""STOW-RS against `fhirimg serve` (gunicorn with the request intake) over real sockets: from
curl with a hand-built multipart body, from dicomweb-client, chunked, and a body far larger
than the FHIR body limit stored with bounded memory."""
from __future__ import annotations

import io
import shutil
import subprocess

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from ..integration.test_serve import Served
from ..services import descendants, require_or_skip
from ..transfer.dicomfactory import make_study
from .conftest import multipart

FHIR_BODY_LIMIT = 1 << 20  # limits.max_body_bytes: STOW bodies are not bound by it


class ServedPush(Served):
    def __init__(self, workdir):
        import os
        os.environ["FHIRIMG_LIMITS__MAX_BODY_BYTES"] = str(FHIR_BODY_LIMIT)
        try:
            super().__init__(workdir, workers=1)
        finally:
            del os.environ["FHIRIMG_LIMITS__MAX_BODY_BYTES"]
        self.root = self.base[: -len("/fhir")]

    def blobs(self) -> dict[str, bytes]:
        return {p.stem: p.read_bytes() for p in (self.workdir / "var" / "blobs").rglob("*.dcm")
                if ".staging" not in p.parts}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = ServedPush(tmp_path_factory.mktemp("stow-served"))
    yield server
    server.stop()


def test_curl_posts_a_hand_built_multipart_body_larger_than_the_fhir_limit(served, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        require_or_skip("curl is not installed")
    study = make_study(series=2, instances=6, rows=256, columns=256, seed=31)
    body, content_type = multipart(list(study.instances.values()))
    assert len(body) > FHIR_BODY_LIMIT
    (tmp_path / "body").write_bytes(body)
    result = subprocess.run([curl, "-sS", "-o", str(tmp_path / "answer"), "-w", "%{http_code}",
                             "-H", f"Content-Type: {content_type}", "-H", "Accept: application/dicom+json",
                             "--data-binary", f"@{tmp_path / 'body'}", f"{served.root}/dicom-web/studies"],
                            capture_output=True, text=True, timeout=60)
    assert result.stdout == "200", (tmp_path / "answer").read_text()
    blobs = served.blobs()
    assert {sop: blobs[sop] for sop in study.instances} == study.instances


def test_a_chunked_upload_is_stored(served):
    study = make_study(series=1, instances=4, rows=128, columns=128, seed=32)
    body, content_type = multipart(list(study.instances.values()))
    chunks = (body[i:i + 10_000] for i in range(0, len(body), 10_000))  # no Content-Length: chunked
    response = requests.post(f"{served.root}/dicom-web/studies/{study.study_uid}", data=chunks,
                             headers={"Content-Type": content_type}, timeout=60)
    assert response.status_code == 200, response.text
    blobs = served.blobs()
    assert {sop: blobs[sop] for sop in study.instances} == study.instances


def test_dicomweb_client_stores_and_reads_back(served):
    study = make_study(series=1, instances=3, rows=64, columns=64, seed=33)
    client = DICOMwebClient(served.root + "/dicom-web")
    datasets = [pydicom.dcmread(io.BytesIO(data)) for data in study.instances.values()]
    answer = client.store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == 3 and "FailedSOPSequence" not in answer
    for ds in client.retrieve_study(study.study_uid):
        sent = pydicom.dcmread(io.BytesIO(study.instances[ds.SOPInstanceUID]))
        assert ds.PixelData == sent.PixelData
    found = requests.get(f"{served.base}/ImagingStudy",
                         params={"identifier": f"urn:dicom:uid|urn:oid:{study.study_uid}"}, timeout=10).json()
    assert found["total"] == 1 and found["entry"][0]["resource"]["numberOfInstances"] == 3


def test_a_large_push_is_streamed_with_bounded_memory(served):
    study = make_study(series=1, instances=40, rows=1024, columns=1024, seed=34)  # 40 x 2 MiB
    body, content_type = multipart(list(study.instances.values()))
    workers = descendants(served.process.pid)
    before = sum(p.memory_info().rss for p in workers)
    response = requests.post(f"{served.root}/dicom-web/studies", data=body,
                             headers={"Content-Type": content_type}, timeout=120)
    assert response.status_code == 200, response.text[:500]
    after = sum(p.memory_info().rss for p in workers if p.is_running())
    assert after - before < 40 << 20, f"the server grew by {(after - before) >> 20} MiB for an {len(body) >> 20} MiB body"
    assert len(study.instances) == 40 and all(served.blobs()[sop] == data for sop, data in study.instances.items())
