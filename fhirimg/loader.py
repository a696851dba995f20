"""`fhirimg load`: send resources and Bundles from files to a FHIR server.

A file holds one JSON resource, a Bundle, or NDJSON (one resource a line, as bulk data
exports write them). Transaction and batch Bundles go to the base as they are; the
entries of other Bundles (collection, searchset) are sent one by one. A resource with an
id is PUT (update-as-create keeps the ids of examples and exports), one without is POSTed.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import requests
from tqdm import tqdm

FHIR_JSON = "application/fhir+json"
SUFFIXES = (".json", ".ndjson")


class ServerUnreachable(Exception):
    """The server cannot be reached at all: stop instead of failing every file."""


@dataclass
class LoadSummary:
    files: int = 0
    requests: int = 0
    resources: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        rate = self.resources / self.seconds if self.seconds else 0.0
        text = (f"{self.files} files, {self.requests} requests, {self.resources} resources written, "
                f"{len(self.failed)} failed, {self.seconds:.1f} s ({rate:.0f} resources/s)")
        return "\n".join([text, *(f"FAILED {f}" for f in self.failed)])


def find_files(paths: list[str]) -> list[Path]:
    """The files named, and the .json/.ndjson files below the directories named, sorted."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()))
        else:
            files.append(path)
    return files


def read_documents(path: Path) -> Iterator[tuple[str, dict]]:
    """(label, document) for each resource in the file; raises ValueError on bad JSON."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".ndjson":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield f"{path}:{number}", _object(json.loads(line))
        return
    document = _object(json.loads(text))
    if document.get("resourceType") == "Bundle" and document.get("type") not in ("transaction", "batch"):
        for index, entry in enumerate(document.get("entry") or []):
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                yield f"{path} entry[{index}]", entry["resource"]
        return
    yield str(path), document


def _object(value) -> dict:
    if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
        raise ValueError("not a FHIR resource (a JSON object with resourceType)")
    return value


def request_for(document: dict, base: str) -> tuple[str, str]:
    """(method, url): Bundles of type transaction/batch go to the base, a resource with an id
    is PUT (update-as-create keeps example ids), one without is POSTed."""
    res_type = document.get("resourceType")
    if res_type == "Bundle" and document.get("type") in ("transaction", "batch"):
        return "POST", base
    if document.get("id"):
        return "PUT", f"{base}/{res_type}/{document['id']}"
    return "POST", f"{base}/{res_type}"


def load_paths(paths: list[str], base: str, progress: bool = True, session=None,
               token: str | None = None) -> LoadSummary:
    """Send every resource found under `paths`; failures are collected, not raised."""
    session = session or requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    summary = LoadSummary()
    started = time.monotonic()
    for path in tqdm(find_files(paths), disable=not progress, unit="file", desc="loading"):
        summary.files += 1
        try:
            for label, document in read_documents(path):
                send_document(session, base.rstrip("/"), label, document, summary)
        except (OSError, ValueError) as exc:
            summary.failed.append(f"{path}: {exc}")
    summary.seconds = time.monotonic() - started
    return summary


def send_document(session, base: str, label: str, document: dict, summary: LoadSummary) -> None:
    method, url = request_for(document, base)
    try:
        response = session.request(method, url, data=json.dumps(document).encode(), timeout=300,
                                   headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON,
                                            "Prefer": "return=minimal" if document["resourceType"] != "Bundle"
                                            else "return=representation"})
    except requests.ConnectionError as exc:
        raise ServerUnreachable(f"cannot reach {base}: {exc}") from None
    except requests.RequestException as exc:
        summary.failed.append(f"{label}: {exc}")
        return
    summary.requests += 1
    if response.status_code >= 400:
        summary.failed.append(f"{label}: HTTP {response.status_code} {describe_outcome(response)}")
        return
    written, failed = count_written(document, response)
    summary.resources += written
    summary.failed.extend(f"{label} entry[{i}]: {why}" for i, why in failed)


def describe_outcome(response) -> str:
    try:
        issues = response.json().get("issue", [])
        return "; ".join(i.get("diagnostics", "") + (f" at {', '.join(i['expression'])}" if i.get("expression") else "")
                         for i in issues)
    except (ValueError, AttributeError):
        return response.text[:200]


def count_written(document: dict, response) -> tuple[int, list[tuple[int, str]]]:
    """(resources written, [(entry index, reason)] of failed batch entries)."""
    if document.get("resourceType") != "Bundle":
        return 1, []
    try:
        entries = response.json().get("entry", [])
    except ValueError:
        return 0, []
    written, failed = 0, []
    for index, entry in enumerate(entries):
        status = str(entry.get("response", {}).get("status", ""))
        if status.startswith(("200", "201")):
            written += 1
        elif not status.startswith(("2", "3")):
            outcome = entry.get("response", {}).get("outcome") or {}
            reasons = "; ".join(i.get("diagnostics", "") for i in outcome.get("issue", []))
            failed.append((index, f"HTTP {status} {reasons}".strip()))
    return written, failed
