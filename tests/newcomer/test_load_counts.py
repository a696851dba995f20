"""`fhirimg load` says what the server did: created, updated, unchanged. A reload that writes
nothing is not "9 resources written" (it counted every 2xx, the batch's two searches too)."""
from __future__ import annotations

import json
from pathlib import Path

from fhirimg.loader import load_paths

from ..factories import make_patient
from ..push.test_examples import EXAMPLES, FlaskSession

BASE = "http://localhost/fhir"


def load(client, *paths: Path):
    return load_paths([str(p) for p in paths], BASE, progress=False, session=FlaskSession(client))


def write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_reloading_the_examples_counts_everything_unchanged(client):
    first = load(client, EXAMPLES)
    assert (first.created, first.updated, first.unchanged, first.failed) == (7, 0, 0, [])
    again = load(client, EXAMPLES)
    assert (again.created, again.updated, again.unchanged, again.failed) == (0, 0, 7, [])
    assert "0 created, 0 updated, 7 unchanged, 0 failed" in again.describe()


def test_a_resource_with_an_id_is_created_then_unchanged_then_updated(client, tmp_path):
    path = write(tmp_path / "patient.json", make_patient("load-counts-1", id="load-counts-1"))
    assert load(client, path).created == 1
    assert load(client, path).unchanged == 1
    write(path, make_patient("load-counts-1", id="load-counts-1", family="Changed"))
    changed = load(client, path)
    assert (changed.created, changed.updated, changed.unchanged) == (0, 1, 0)
    assert client.get("/fhir/Patient/load-counts-1").get_json()["meta"]["versionId"] == "2"


def test_searches_in_a_batch_are_not_counted_as_written(client, tmp_path):
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": make_patient("load-counts-2", id="load-counts-2"),
         "request": {"method": "PUT", "url": "Patient/load-counts-2"}},
        {"request": {"method": "GET", "url": "Patient?identifier=load-counts-2"}}]}
    summary = load(client, write(tmp_path / "batch.json", batch))
    assert (summary.created, summary.updated, summary.unchanged, summary.resources) == (1, 0, 0, 1)


def test_a_failure_of_a_single_resource_names_its_own_element(client, tmp_path):
    path = write(tmp_path / "bad.json", make_patient("load-counts-3", gender="robot"))
    summary = load(client, path)
    assert summary.resources == 0 and len(summary.failed) == 1
    assert summary.failed[0].startswith(f"{path}: HTTP 422") and summary.failed[0].endswith("at Patient.gender")
