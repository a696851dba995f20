"""Issue 16: a database made by the last release without versioned migrations (c06edf0),
holding data, is refused, upgraded with `fhirimg db upgrade`, then read through the API:
resources, history, search and the audit chain as that release answered them."""
from __future__ import annotations

import subprocess

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect, text

from fhirimg.app import create_app
from fhirimg.cli import main as fhirimg_main
from fhirimg.migrations import PACKAGED
from fhirimg.migrations.cli import db

from ..auth_support import authorized
from ..factories import make_patient
from ..services import fhirimg_command, fhirimg_env
from .release import expected_answers


def audit_head(engine) -> tuple[int, str]:
    with engine.connect() as conn:
        return tuple(conn.execute(text("SELECT seq, hash FROM audit_head WHERE id = 1")).one())


@pytest.fixture
def upgraded(release_engine, config_file):
    """The release's database after `fhirimg db upgrade`, with its audit head from before."""
    head = audit_head(release_engine)
    result = CliRunner().invoke(db, ["upgrade", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    return release_engine, head, result.output


def test_upgrade_adopts_the_release_database_and_names_what_it_added(upgraded):
    engine, _, output = upgraded
    assert output.splitlines()[0].startswith("adopted the database of a release without versions as 0001_baseline")
    assert "audit_export" in output and "audit_forward" in output  # that release made them on first use only
    assert output.splitlines()[-1] == f"now at {PACKAGED.head} (head)"
    assert {"audit_export", "audit_forward", "auth_user"} <= set(inspect(engine).get_table_names())


def test_the_upgraded_database_answers_as_the_release_did(upgraded, backend, config):
    engine, _, _ = upgraded
    expected = expected_answers(backend)
    ids = expected["ids"]
    client = authorized(create_app(config, engine=engine))
    for name, kind in (("patient", "Patient"), ("study", "ImagingStudy"), ("task", "Task")):
        assert client.get(f"/fhir/{kind}/{ids[name]}").json == expected["read"][name]
    history = client.get(f"/fhir/Patient/{ids['patient']}/_history").json
    assert [[e["resource"]["meta"]["versionId"], e["resource"]["name"][0]["family"]]
            for e in history["entry"]] == expected["patient_history"]
    found = client.get(f"/fhir/ImagingStudy?patient=Patient/{ids['patient']}").json
    assert sorted(e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match") == \
        expected["study_search"]
    assert client.get(f"/fhir/Endpoint/{ids['endpoint']}").status_code == expected["endpoint_status"] == 410


def test_the_release_audit_chain_verifies_after_the_upgrade(upgraded, config_file):
    _, (seq, head_hash), _ = upgraded
    result = CliRunner().invoke(fhirimg_main, ["audit", "verify", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"OK: {seq} audit events, head {head_hash}"


def test_writes_after_the_upgrade_continue_the_history_and_the_chain(upgraded, backend, config, config_file):
    engine, (seq, _), _ = upgraded
    patient = expected_answers(backend)["ids"]["patient"]
    client = authorized(create_app(config, engine=engine))
    changed = client.put(f"/fhir/Patient/{patient}", json=make_patient(mrn="MRN-0001", family="Smith", id=patient))
    assert changed.status_code == 200 and changed.json["meta"]["versionId"] == "3"
    found = client.get(f"/fhir/AuditEvent?patient={patient}&_count=100").json
    assert any(int(e["resource"]["id"]) <= seq for e in found["entry"])  # the release's events
    assert any(int(e["resource"]["id"]) > seq for e in found["entry"])  # and this one's
    result = CliRunner().invoke(fhirimg_main, ["audit", "verify", "--config", str(config_file)])
    assert result.exit_code == 0 and result.output.startswith("OK: "), result.output


def test_the_release_events_are_searchable_once_after_the_upgrade(upgraded, config):
    """0004_audit_indexed starts the fold's watermark at the head: the release's events already
    have their search values, and none is folded in a second time."""
    engine, (seq, _), _ = upgraded
    with engine.connect() as conn:
        assert conn.execute(text("SELECT seq FROM audit_indexed WHERE id = 1")).scalar() == seq
        before = conn.execute(text("SELECT count(*) FROM audit_index")).scalar()
    client = authorized(create_app(config, engine=engine))
    found = client.get("/fhir/AuditEvent?action=R,C,U,D,E&_count=1000").json
    ids = [int(e["resource"]["id"]) for e in found["entry"] if int(e["resource"]["id"]) <= seq]
    assert sorted(ids) == list(range(1, seq + 1))
    with engine.connect() as conn:
        repeated = conn.execute(text("SELECT count(*) FROM (SELECT seq, param, value FROM audit_index WHERE seq <= :s "
                                     "GROUP BY seq, param, system, value HAVING count(*) > 1) AS r"), {"s": seq}).scalar()
        assert repeated == 0 and conn.execute(text("SELECT count(*) FROM audit_index WHERE seq <= :s"),
                                              {"s": seq}).scalar() == before


def test_upgrade_refuses_a_database_whose_tables_differ_and_changes_nothing(release_engine, config_file):
    with release_engine.begin() as conn:
        conn.execute(text("ALTER TABLE site_identity ADD COLUMN note TEXT"))
    result = CliRunner().invoke(db, ["upgrade", "--config", str(config_file)])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot adopt this database") and "site_identity has unknown note" \
        in result.output and len(result.output.strip().splitlines()) == 1
    assert not {"alembic_version", "audit_export"} & set(inspect(release_engine).get_table_names())


@pytest.mark.parametrize("backend", ["sqlite"])
def test_serve_refuses_the_release_database_in_one_line(release_engine, config_file, tmp_path):
    done = subprocess.run(fhirimg_command() + ["serve", "--config", str(config_file)], cwd=tmp_path,
                          env=fhirimg_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "Error: the database was made by a fhirimg release before versioned migrations (tables but no "
        "revision): stop fhirimg's servers and workers, back up the database and run `fhirimg db upgrade`"]
