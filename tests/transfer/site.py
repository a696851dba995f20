"""A fhirimg site for transfer tests: config, app, repository and a worker context on one SQLite file."""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from pathlib import Path

import pydicom
from werkzeug.serving import make_server

import fhirimg.transfer.settings  # noqa: F401 - registers the [transfer] section
from fhirimg.app import create_app
from fhirimg.config import load_config
from fhirimg.transfer.jobs import worker_context
from fhirimg.transfer.tasks import TransferContext

from ..auth_support import authorized
from ..factories import make_endpoint, make_imaging_study
from .multipart_reference import reference_parts

FAST_RETRIES = {"backoff_base": 0.01, "backoff_max": 0.05, "retry_after_max": 0.5, "read_timeout": 10}


def site_config(tmp: Path, redis_url: str = "", database_url: str | None = None, **transfer) -> dict:
    section = {"allow_loopback": True, **FAST_RETRIES, **transfer}
    return load_config(env={}, read_files=False, overrides={
        "database_url": database_url or f"sqlite:///{tmp / 'site.db'}", "var_dir": str(tmp / "var"),
        "redis_url": redis_url,
        "base_url": "http://fhirimg.test/fhir", "transfer": section})


@dataclass
class Site:
    config: dict
    app: object

    @property
    def client(self):
        """A backend client with system/*.cruds (a token from the site's own token endpoint)."""
        if "client" not in self.__dict__:
            self.__dict__["client"] = authorized(self.app)
        return self.__dict__["client"]

    @property
    def repo(self):
        return self.app.extensions["fhirimg.repository"]

    def context(self) -> TransferContext:
        return worker_context(self.config)

    def add_study(self, source_base: str, study_uid: str, **study) -> str:
        """An Endpoint for the source and an ImagingStudy naming the study UID; returns its id."""
        endpoint = self.client.post("/fhir/Endpoint", json=make_endpoint(source_base)).json["id"]
        body = make_imaging_study(study_uid=study_uid, endpoint=[{"reference": f"Endpoint/{endpoint}"}], **study)
        response = self.client.post("/fhir/ImagingStudy", json=body)
        assert response.status_code == 201, response.json
        return response.json["id"]

    def start_retrieve(self, study_id: str, priority: str | None = None) -> str:
        body = {"resourceType": "Parameters", "parameter": [{"name": "priority", "valueCode": priority}]}
        response = self.client.post(f"/fhir/ImagingStudy/{study_id}/$retrieve", json=body if priority else None)
        assert response.status_code == 202, response.json
        return response.headers["Content-Location"].rsplit("/", 1)[1]

    def task(self, task_id: str) -> dict:
        return self.client.get(f"/fhir/Task/{task_id}").json

    def store(self, study) -> None:
        """Place a synthetic study's instances in the blob store as the worker does (staged,
        checked with pydicom, committed), without a source archive."""
        from fhirimg.transfer.dicomcheck import Expectation, inspect_part10
        blobstore = self.context().blobstore
        for series in study.series:
            for sop, data in series.instances.items():
                staged = blobstore.open_staging()
                staged.write(data)
                staged.finish()
                blobstore.commit(staged, inspect_part10(staged.path, Expectation(study.study_uid, series.series_uid,
                                                                                 frozenset([sop]))))

    def served_study(self, study_uid: str) -> dict[str, bytes]:
        """What our own /dicom-web serves for the study, split by an independent parser."""
        response = self.client.get(f"/dicom-web/studies/{study_uid}",
                                   headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert response.status_code == 200, response.data[:300]
        return parts_by_sop(response.data, response.headers["Content-Type"])


def parts_by_sop(body: bytes, content_type: str) -> dict[str, bytes]:
    return {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID: p for p in reference_parts(body, content_type)}


def make_site(tmp: Path, redis_url: str = "", database_url: str | None = None, **transfer) -> Site:
    config = site_config(tmp, redis_url, database_url, **transfer)
    return Site(config, create_app(config))


class LiveServer:
    """The site's app on a real socket (for dicomweb-client and the benchmark)."""

    def __init__(self, app):
        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
