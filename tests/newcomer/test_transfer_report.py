"""`fhirimg transfer-report`: a read-only command that never creates a database, answers in
one line when it cannot, and prints a failed Task for people (or as JSON), never `None`."""
from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from fhirimg.cli import main
from fhirimg.transfer.tasks import run_retrieve

from ..services import free_port
from ..transfer.site import make_site


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A directory that is not the repository, and no FHIRIMG_* setting."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("FHIRIMG_")]:
        monkeypatch.delenv(name)
    return tmp_path


def report(*args: str):
    """`fhirimg transfer-report ARGS`, its stderr apart (a failure must be one line of it)."""
    return CliRunner().invoke(main, ["transfer-report", *args])


def test_outside_the_repository_it_creates_no_database_and_says_where_it_looked(elsewhere):
    result = report("some-task")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.count("\n") == 1
    assert f"no database at {elsewhere / 'var' / 'fhirimg.db'}" in result.stderr
    assert "--config" in result.stderr and "FHIRIMG_CONFIG" in result.stderr
    assert list(elsewhere.iterdir()) == []  # no var/, no fhirimg.db


def test_a_file_that_is_not_a_fhirimg_database_is_one_line(elsewhere, monkeypatch):
    (elsewhere / "other.db").write_bytes(b"")
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", "sqlite:///other.db")
    result = report("some-task")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.count("\n") == 1 and "cannot read sqlite:///other.db" in result.stderr


def test_an_unreachable_postgresql_is_one_line_with_the_password_masked(elsewhere, monkeypatch):
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", f"postgresql+psycopg://fhirimg:secret@127.0.0.1:{free_port()}/fhirimg")
    result = report("some-task")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.count("\n") == 1, result.stderr
    assert "secret" not in result.stderr and "fhirimg:***@" in result.stderr


def test_found_from_any_directory_through_fhirimg_config(failed_task, elsewhere, monkeypatch):
    """The README's rule: a configuration named by FHIRIMG_CONFIG is read wherever the command runs."""
    site, task_id = failed_task
    config = elsewhere / "site.toml"
    config.write_text(f'database_url = "{site.config["database_url"]}"\n')
    monkeypatch.setenv("FHIRIMG_CONFIG", str(config))
    result = report(task_id)
    assert result.exit_code == 0 and f"Task/{task_id}  status=failed" in result.output


@pytest.fixture
def failed_task(tmp_path_factory):
    """A Task that failed before its first step finished: its source refuses connections."""
    site = make_site(tmp_path_factory.mktemp("site"), max_retries=0)
    study_id = site.add_study(f"http://127.0.0.1:{free_port()}/dicom-web", "1.2.826.0.1.3680043.8.498.16.9")
    task_id = site.start_retrieve(study_id)
    assert run_retrieve(task_id, site.context()) == "failed"
    return site, task_id


def test_a_failed_task_is_reported_without_none(failed_task, monkeypatch):
    site, task_id = failed_task
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", site.config["database_url"])
    result = CliRunner().invoke(main, ["transfer-report", task_id])
    assert result.exit_code == 0, result.output
    assert "None" not in result.output
    assert "status=failed" in result.output and "reason: the source could not be reached" in result.output
    assert "no counts recorded: the Task failed before a step finished" in result.output


def test_json_gives_machines_nulls_for_what_was_never_counted(failed_task, monkeypatch):
    site, task_id = failed_task
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", site.config["database_url"])
    result = CliRunner().invoke(main, ["transfer-report", task_id, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["task"] == f"Task/{task_id}" and data["status"] == "failed"
    assert data["instances_expected"] is None and data["seconds"]["total"] is None
    assert data["reason"].startswith("the source could not be reached")
