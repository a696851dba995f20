"""`fhirimg load` and `fhirimg bench ...` talk to the server the configuration describes
(base_url, else serve.host:serve.port), not to a fixed http://127.0.0.1:8080/fhir; the
configuration is found as by every command (--config, FHIRIMG_CONFIG)."""
from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from fhirimg.cli import main

from ..factories import make_patient

BATCH_RESPONSE = {"resourceType": "Bundle", "type": "batch-response",
                  "entry": [{"response": {"status": "201 Created"}}]}


class RecordingServer:
    """Answers every request with a one-entry batch-response and remembers its path."""

    def __init__(self):
        self.paths: list[str] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self.answer()

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.answer()

            def answer(self):
                recorder.paths.append(self.path)
                body = json.dumps(BATCH_RESPONSE).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder():
    server = RecordingServer()
    yield server
    server.stop()


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A directory without config/fhirimg.toml and an environment without FHIRIMG_*."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("FHIRIMG_")]:
        monkeypatch.delenv(name)
    return tmp_path


def config_file(directory, text: str):
    path = directory / "site.toml"
    path.write_text(text)
    return str(path)


def patient_file(directory) -> str:
    path = directory / "patient.json"
    path.write_text(json.dumps(make_patient("configured-base")))
    return str(path)


def test_load_sends_to_serve_port_of_config_option(recorder, elsewhere):
    config = config_file(elsewhere, f"[serve]\nport = {recorder.port}\n")
    result = CliRunner().invoke(main, ["load", "--quiet", "--config", config, patient_file(elsewhere)])
    assert result.exit_code == 0, result.output
    assert recorder.paths == ["/fhir"] and "1 created" in result.output


def test_load_sends_to_base_url_of_fhirimg_config(recorder, elsewhere, monkeypatch):
    monkeypatch.setenv("FHIRIMG_CONFIG", config_file(elsewhere, f'base_url = "http://127.0.0.1:{recorder.port}/x/fhir"\n'))
    result = CliRunner().invoke(main, ["load", "--quiet", patient_file(elsewhere)])
    assert result.exit_code == 0, result.output
    assert recorder.paths == ["/x/fhir"]


def test_an_explicit_base_still_wins(recorder, elsewhere):
    config = config_file(elsewhere, "[serve]\nport = 9\n")
    result = CliRunner().invoke(main, ["load", "--quiet", "--config", config, "--base",
                                       f"http://127.0.0.1:{recorder.port}/fhir", patient_file(elsewhere)])
    assert result.exit_code == 0 and recorder.paths == ["/fhir"]


@pytest.mark.parametrize("args", [["crud", "--count", "1", "--clients", "1"], ["history", "--versions", "1"],
                                  ["ingest", "--studies", "1", "--concurrency", "1", "--database-url", "none"]],
                         ids=lambda a: a[0])
def test_benchmarks_use_the_configured_server(recorder, elsewhere, args):
    config = config_file(elsewhere, f"[serve]\nport = {recorder.port}\n")
    result = CliRunner().invoke(main, ["bench", *args, "--config", config])
    assert f"against http://127.0.0.1:{recorder.port}/fhir" in result.output
    assert recorder.paths and all(p.startswith("/fhir") for p in recorder.paths)


def test_bench_replicate_reads_the_configured_source(recorder, elsewhere):
    config = config_file(elsewhere, f"[serve]\nport = {recorder.port}\n")
    CliRunner().invoke(main, ["bench", "replicate", "--changes", "1", "--config", config])
    assert recorder.paths and recorder.paths[0].startswith("/fhir/_history")
