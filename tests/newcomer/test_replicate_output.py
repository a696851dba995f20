"""`fhirimg replicate pull` prints a round for people (what moved, caught up or not), or one
JSON object per round with --json; never a Python repr like `PullReport(pages=1, ...)`."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from fhirimg.cli import main

from ..factories import make_patient
from ..replicate.conftest import ServedSite
from ..services import free_port


@pytest.fixture
def source(tmp_path):
    site = ServedSite("source", f"sqlite:///{tmp_path / 'source.db'}", None)
    for n in range(3):
        site.site.repo.create("Patient", make_patient(f"replicate-output-{n}"))
    yield site
    site.stop()


def pull(tmp_path, monkeypatch, source_url: str, *extra: str):
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", f"sqlite:///{tmp_path / 'replica.db'}")
    monkeypatch.setenv("FHIRIMG_LOG_LEVEL", "ERROR")
    return CliRunner().invoke(main, ["replicate", "pull", "--source", source_url, "--name", "from-source", *extra])


def test_pull_prints_what_moved_for_people(source, tmp_path, monkeypatch):
    result = pull(tmp_path, monkeypatch, source.url)
    assert result.exit_code == 0, result.output
    assert result.output == (f"from-source (pull from {source.url}): 1 pages, 3 applied, 0 skipped, "
                             "0 conflicts, 0 rejected; caught up\n")


def test_pull_json_is_one_object_per_round(source, tmp_path, monkeypatch):
    result = pull(tmp_path, monkeypatch, source.url, "--json")
    assert result.exit_code == 0, result.output
    round_ = json.loads(result.stdout)
    assert round_ == {"link": "from-source", "direction": "pull", "url": source.url, "pages": 1, "applied": 3,
                      "skipped": 0, "conflicts": 0, "rejected": 0, "caught_up": True, "errors": []}


def test_a_failed_pull_says_so_and_exits_1(tmp_path, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}/fhir"
    monkeypatch.setenv("FHIRIMG_REPLICATE__MAX_ATTEMPTS", "1")
    result = pull(tmp_path, monkeypatch, dead)
    assert result.exit_code == 1
    assert re.fullmatch(rf"from-source \(pull from {re.escape(dead)}\): 0 pages, 0 applied, 0 skipped, "
                        r"0 conflicts, 0 rejected; failed\n", result.stdout), result.stdout
    assert result.stderr.startswith("from-source: FAILED: ")
