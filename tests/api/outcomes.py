"""Assertions shared by the API tests: what a rejection must look like."""
from __future__ import annotations

from contextlib import contextmanager

from ..conftest import table_counts

FHIR = {"Content-Type": "application/fhir+json"}
PATCH = {"Content-Type": "application/json-patch+json"}


def assert_outcome(response, status: int, *, expression: str | None = None, says: str | None = None) -> dict:
    """The response is `status` with an OperationOutcome whose issue names `expression`
    (an exact element path) and whose diagnostics mention `says`."""
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    outcome = response.get_json(force=True)
    assert outcome["resourceType"] == "OperationOutcome"
    issues = outcome["issue"]
    assert issues and all(i["severity"] in ("error", "fatal") for i in issues)
    if expression is not None:
        found = [e for i in issues for e in i.get("expression", [])]
        assert expression in found, f"{expression!r} not among {found!r}"
    if says is not None:
        text = " ".join(i.get("diagnostics", "") for i in issues).lower()
        assert says.lower() in text, f"{says!r} not in {text!r}"
    return outcome


@contextmanager
def nothing_written(engine):
    """Fails unless every table has the same row count after the block as before it."""
    before = table_counts(engine)
    yield
    assert table_counts(engine) == before


def create(client, resource: dict, **headers):
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={**FHIR, **headers})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response
