"""`fhirimg worker` keeps configured links going; `fhirimg replicate status` reports them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import requests
from click.testing import CliRunner

from fhirimg.cli import main

from ..factories import make_patient
from .state import all_versions, version_count
from .test_crash_resume import database_url_for_subprocess
from .writers import FHIR, write_changes


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_worker_runs_configured_pull_link_on_its_interval(make_site, redis_server, tmp_path):
    a, b = make_site("a"), make_site("b")
    write_changes(a.url, 20, seed=21)
    config = tmp_path / "fhirimg.toml"
    config.write_text(f'''
database_url = "{database_url_for_subprocess(b)}"
redis_url = "{redis_server.url}"
var_dir = "{tmp_path / 'var'}"
[replicate]
page_size = 10
[[replicate.links]]
name = "from-a"
direction = "pull"
url = "{a.url}"
interval = "1s"
''')
    env = {**os.environ, "FHIRIMG_CONFIG": str(config)}
    log = tmp_path / "worker.log"
    worker = subprocess.Popen([sys.executable, "-m", "fhirimg.cli", "worker"], env=env, cwd=tmp_path,
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: version_count(b.engine) == version_count(a.engine), 60, "the first scheduled pull")
        requests.post(f"{a.url}/Patient", json=make_patient(family="Later"), headers=FHIR).raise_for_status()
        wait_until(lambda: version_count(b.engine) == version_count(a.engine), 30, "a rescheduled pull")
        assert all_versions(b.engine) == all_versions(a.engine)
    finally:
        worker.terminate()
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:  # once in CI (session 12): say where it was
            worker.kill()
            raise AssertionError("the worker did not stop within 20 s of SIGTERM; its log ends:\n"
                                 + log.read_text(errors="replace")[-3000:]) from None


def test_status_shows_cursor_behind_lag_and_last_error(make_site, tmp_path, monkeypatch):
    a, b = make_site("a"), make_site("b")
    write_changes(a.url, 12, seed=22)
    b.run(b.link("pull", a))
    write_changes(a.url, 5, seed=23)  # changes b has not pulled yet
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", database_url_for_subprocess(b))
    monkeypatch.delenv("FHIRIMG_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["replicate", "status", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["name"] == "pull-a" and row["cursor"].startswith(a.url + "/_history?")
    assert row["behind"] == version_count(a.engine) - version_count(b.engine) >= 5
    assert row["lag_seconds"] is not None and row["lag_seconds"] >= 0
    assert row["applied"] == version_count(b.engine) and row["last_error"] is None
    b.run(b.link("pull", a))
    (row,) = json.loads(CliRunner().invoke(main, ["replicate", "status", "--json"]).output)
    assert row["behind"] == 0 and row["lag_seconds"] == 0.0
    text = CliRunner().invoke(main, ["replicate", "status"]).output
    assert "behind 0 changes" in text and "pull-a" in text


def test_push_status_counts_local_changes_not_yet_sent(make_site, tmp_path, monkeypatch):
    a, b = make_site("a"), make_site("b")
    a.run(a.link("push", b))
    write_changes(a.url, 4, seed=24)
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", database_url_for_subprocess(a))
    monkeypatch.delenv("FHIRIMG_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    (row,) = json.loads(CliRunner().invoke(main, ["replicate", "status", "--json"]).output)
    assert row["direction"] == "push" and row["behind"] == version_count(a.engine) and row["lag_seconds"] > 0


def test_cli_pull_once_copies_and_reports(make_site, tmp_path, monkeypatch):
    a, b = make_site("a"), make_site("b")
    write_changes(a.url, 10, seed=25)
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", database_url_for_subprocess(b))
    monkeypatch.delenv("FHIRIMG_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["replicate", "pull", "--source", a.url, "--types", "Patient,ImagingStudy"])
    assert result.exit_code == 0, result.output
    assert all_versions(b.engine) == all_versions(a.engine, ("Patient", "ImagingStudy"))
    bad = CliRunner().invoke(main, ["replicate", "pull", "--source", a.url, "--types", "Observation"])
    assert bad.exit_code != 0 and "Observation" in bad.output


def test_cli_run_once_runs_the_configured_links(make_site, tmp_path, monkeypatch):
    a, b = make_site("a"), make_site("b")
    write_changes(a.url, 8, seed=26)
    config = tmp_path / "fhirimg.toml"
    config.write_text(f'''
database_url = "{database_url_for_subprocess(b)}"
[[replicate.links]]
name = "from-a"
direction = "pull"
url = "{a.url}"
''')
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["replicate", "run", "--once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert all_versions(b.engine) == all_versions(a.engine)
    missing = CliRunner().invoke(main, ["replicate", "run", "--once", "--link", "nope", "--config", str(config)])
    assert missing.exit_code != 0 and "nope" in missing.output


def test_status_lists_configured_links_that_never_ran(make_site, tmp_path, monkeypatch):
    b = make_site("b")
    config = tmp_path / "fhirimg.toml"
    config.write_text(f'''
database_url = "{database_url_for_subprocess(b)}"
[[replicate.links]]
name = "to-nowhere"
direction = "push"
url = "http://127.0.0.1:9/fhir"
''')
    result = CliRunner().invoke(main, ["replicate", "status", "--json", "--config", str(config)])
    (row,) = json.loads(result.output)
    assert row["name"] == "to-nowhere" and row["last_error"] == "never ran"
