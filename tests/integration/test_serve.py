"""`fhirimg serve` under gunicorn and `fhirimg load`, as real processes over real sockets."""
from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from ..factories import make_endpoint, make_imaging_study, make_patient
from ..services import (descendants, fhirimg_command, fhirimg_env, free_port, start_fhirimg, wait_for_http,
                        wait_gone)

FHIR = {"Content-Type": "application/fhir+json"}


class Served:
    def __init__(self, workdir: Path, workers: int = 2, anonymous: bool = True):
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.env = fhirimg_env(anonymous, database_url=f"sqlite:///{workdir / 'fhirimg.db'}",
                               var_dir=workdir / "var", log_level="WARNING")
        self.process = start_fhirimg(["serve", "--port", str(self.port), "--workers", str(workers)],
                                     workdir, self.env)
        wait_for_http(f"{self.base}/metadata", self.process, log=workdir / "fhirimg.log")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = Served(tmp_path_factory.mktemp("serve"))
    yield server
    server.stop()


def test_serve_runs_the_configured_number_of_gunicorn_workers(served):
    # The first worker may answer /metadata before gunicorn has forked the second one.
    deadline = time.monotonic() + 15
    workers = descendants(served.process.pid)
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = descendants(served.process.pid)
    time.sleep(0.5)  # and no third one appears
    workers = descendants(served.process.pid)
    assert len(workers) == 2, [p.cmdline() for p in workers]


def test_create_then_read_over_http(served):
    created = requests.post(f"{served.base}/Patient", json=make_patient("serve-1"), headers=FHIR, timeout=10)
    assert created.status_code == 201
    location = created.headers["Location"]
    assert location.startswith(served.base + "/Patient/") and location.endswith("/_history/1")
    # Several reads: with 2 workers they are spread over both processes, which share the file DB.
    for _ in range(6):
        read = requests.get(f"{served.base}/Patient/{created.json()['id']}", timeout=10)
        assert read.status_code == 200 and read.json()["identifier"] == created.json()["identifier"]
        assert read.headers["ETag"] == 'W/"1"'


def test_the_access_log_names_paths_but_never_query_strings(served):
    # Query strings carry names and MRNs: they go to the AuditEvent, not to the log.
    found = requests.get(f"{served.base}/Patient?family=Secretname-9731&identifier=MRN-5531", timeout=10,
                         headers={"X-Request-Id": "log-check-1"})
    assert found.status_code == 200
    log = served.workdir / "fhirimg.log"
    deadline = time.monotonic() + 10
    while "log-check-1" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(line for line in log.read_text().splitlines() if "log-check-1" in line)
    assert '"GET /fhir/Patient HTTP/1.1" 200' in line
    assert "Secretname" not in log.read_text() and "MRN-5531" not in log.read_text()


def test_sigterm_stops_the_server_and_its_workers(tmp_path):
    server = Served(tmp_path)
    workers = descendants(server.process.pid)
    assert workers
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0
    assert wait_gone(workers, 5) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.base}/metadata", timeout=2)


def test_bad_configuration_stops_serve_naming_the_key(tmp_path):
    env = fhirimg_env(serve__workers="lots")
    result = subprocess.run(fhirimg_command() + ["serve"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "serve.workers" in result.stderr


# --- fhirimg load --------------------------------------------------------------------------

def write(path: Path, document) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def load(served, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(fhirimg_command() + ["load", *map(str, paths), "--base", served.base],
                          env=served.env, capture_output=True, text=True, timeout=120)


def test_load_directory_sends_resources_bundles_and_ndjson(served, tmp_path):
    data = tmp_path / "data"
    write(data / "patient.json", make_patient("load-1", id="load-pat-1"))
    write(data / "nested" / "endpoint.json", make_endpoint())
    study_uid = "1.2.826.0.1.3680043.10.543.999.1"
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c5b1e-0000-4000-8000-000000000001", "resource": make_patient("load-2"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": make_imaging_study("urn:uuid:6f1c5b1e-0000-4000-8000-000000000001", study_uid=study_uid),
         "request": {"method": "POST", "url": "ImagingStudy"}}]}
    write(data / "bundle.json", transaction)
    collection = {"resourceType": "Bundle", "type": "collection",
                  "entry": [{"resource": make_patient("load-3")}, {"resource": make_patient("load-4")}]}
    write(data / "collection.json", collection)
    (data / "patients.ndjson").write_text("\n".join(json.dumps(make_patient(f"load-nd-{i}")) for i in range(3)) + "\n")
    (data / "notes.txt").write_text("not FHIR, not loaded")

    result = load(served, data)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "5 files, 8 requests: 9 created, 0 updated, 0 unchanged, 0 failed" in result.stdout
    assert "loading" in result.stderr and "100%" in result.stderr  # the tqdm progress bar
    assert requests.get(f"{served.base}/Patient/load-pat-1").status_code == 200
    for mrn in ("load-2", "load-3", "load-4", "load-nd-0", "load-nd-2"):
        found = requests.get(f"{served.base}/Patient", params={"identifier": mrn}).json()
        assert len(found.get("entry", [])) == 1, mrn
    studies = requests.get(f"{served.base}/ImagingStudy", params={"identifier": f"urn:oid:{study_uid}"}).json()
    subject = studies["entry"][0]["resource"]["subject"]["reference"]
    assert subject.startswith("Patient/") and "urn:uuid" not in subject


def test_load_reports_each_failure_and_exits_1(served, tmp_path):
    good = write(tmp_path / "good.json", make_patient("load-ok"))
    invalid = write(tmp_path / "invalid.json", make_patient("load-bad", gender="robot"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = load(served, good, invalid, broken)
    assert result.returncode == 1
    assert "3 files, 2 requests: 1 created, 0 updated, 0 unchanged, 2 failed" in result.stdout
    assert f"FAILED {invalid}: HTTP 422" in result.stdout and "Patient.gender" in result.stdout
    assert f"FAILED {broken}:" in result.stdout


def test_load_stops_at_once_when_the_server_is_unreachable(tmp_path):
    path = write(tmp_path / "p.json", make_patient())
    result = subprocess.run(fhirimg_command() + ["load", str(path), "--base", f"http://127.0.0.1:{free_port()}/fhir"],
                            capture_output=True, text=True, timeout=60, env=fhirimg_env())
    assert result.returncode == 1
    assert "cannot reach" in result.stderr


def test_bench_ingest_prints_its_figures_and_the_ratio_to_the_storage_layer(served):
    """`fhirimg bench ingest` against a real server: every figure the README names, for the
    Bundles it posted without an error, and the raw-store baseline of the same run."""
    import re

    from click.testing import CliRunner

    from fhirimg.cli import main  # through the group, as `fhirimg bench ingest` runs (click caches
    # a command's help option per command object: invoking the bare command would drop `-h`)
    result = CliRunner().invoke(main, ["bench", "ingest", "--base", served.base, "--studies", "12", "--series", "2",
                                       "--instances", "3", "--concurrency", "3", "--database-url",
                                       served.env["FHIRIMG_DATABASE_URL"]])
    assert result.exit_code == 0, result.output
    ingest = next(line for line in result.output.splitlines() if line.startswith("ingest"))
    raw = next(line for line in result.output.splitlines() if line.startswith("raw store"))
    for figure in ("studies/s", "resources/s", "MB/s", "p50", "p95", "p99"):
        assert figure in ingest, (figure, ingest)
    assert ingest.split()[1] == "12" and ingest.endswith("errors 0") and raw.endswith("errors 0")
    ratio = re.search(r"ratio ingest/raw-store: ([0-9.]+)", result.output)
    assert ratio and float(ratio.group(1)) > 0
    found = requests.get(f"{served.base}/ImagingStudy", params={"_summary": "count"}, timeout=10).json()
    assert found["total"] >= 12 + 12  # what was posted and what the baseline stored


def test_load_examples_as_the_readme_shows(served):
    """README: `fhirimg load examples/` loads the shipped examples into a running server."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    result = load(served, examples)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout
    spec_study = requests.get(f"{served.base}/ImagingStudy/example", timeout=10)
    assert spec_study.status_code == 200 and spec_study.json()["resourceType"] == "ImagingStudy"
    ct = requests.get(f"{served.base}/ImagingStudy", params={"modality": "CT"}, timeout=10).json()
    assert ct.get("total", len(ct.get("entry", []))) >= 1


@pytest.mark.parametrize("request_line, status", [(b"GET /fhir/Patient?" + b"a" * 9000 + b" HTTP/1.1", 414),
                                                   (b"BR@KEN", 400)])
def test_gunicorns_own_errors_are_operation_outcomes(served, request_line, status):
    """Issue 15 item 5: answers made before Flask sees the request are JSON too."""
    import socket
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode())
    assert b"Content-Type: application/fhir+json" in head
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["severity"] == "error"


def test_a_header_section_over_the_limit_is_431_in_json(served):
    response = requests.get(f"{served.base}/metadata", headers={f"X-Big-{n}": "y" * 100 for n in range(120)},
                            timeout=10)
    assert response.status_code == 431 and response.json()["resourceType"] == "OperationOutcome"
