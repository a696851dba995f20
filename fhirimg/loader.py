"""`fhirimg load`: send resources and Bundles from files to a FHIR server.

A file holds one JSON resource, a Bundle, or NDJSON (one resource a line, as bulk data
exports write them). Transaction and batch Bundles go to the base as they are; the
entries of other Bundles (collection, searchset) are sent one by one. A resource with an
id is PUT (update-as-create keeps the ids of examples and exports), one without is POSTed,
each as a batch of one entry so that the answer says what the server did with it.
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
    """What the server did with what was sent; reads (GET entries of a batch) count nowhere."""

    files: int = 0
    requests: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    seconds: float = 0.0
    failed: list[str] = field(default_factory=list)

    @property
    def resources(self) -> int:
        """Resources the server accepted, whether or not it wrote a new version."""
        return self.created + self.updated + self.unchanged + self.deleted

    def count(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)

    def describe(self) -> str:
        rate = self.resources / self.seconds if self.seconds else 0.0
        deleted = f", {self.deleted} deleted" if self.deleted else ""
        text = (f"{self.files} files, {self.requests} requests: {self.created} created, {self.updated} updated, "
                f"{self.unchanged} unchanged{deleted}, {len(self.failed)} failed, {self.seconds:.1f} s "
                f"({rate:.0f} resources/s)")
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


def is_request_bundle(document: dict) -> bool:
    return document.get("resourceType") == "Bundle" and document.get("type") in ("transaction", "batch")


def request_for(document: dict) -> tuple[str, str]:
    """(method, relative url) of a single resource: one with an id is PUT (update-as-create
    keeps the ids of examples and exports), one without is POSTed."""
    if document.get("id"):
        return "PUT", f"{document['resourceType']}/{document['id']}"
    return "POST", document["resourceType"]


def batch_of_one(document: dict) -> dict:
    """A single resource goes as a batch of one entry: the server's answer to an entry says
    whether it created, updated or left the resource unchanged (a plain PUT answers 200
    alike for a new version and for identical content)."""
    method, url = request_for(document)
    return {"resourceType": "Bundle", "type": "batch",
            "entry": [{"resource": document, "request": {"method": method, "url": url}}]}


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
    """POST one Bundle (a single resource as a batch of one) and count what the server did."""
    single = not is_request_bundle(document)
    bundle = batch_of_one(document) if single else document
    try:
        # return=OperationOutcome: each write entry's outcome says what the server did.
        response = session.request("POST", base, data=json.dumps(bundle).encode(), timeout=300,
                                   headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON,
                                            "Prefer": "return=OperationOutcome"})
    except requests.ConnectionError as exc:
        raise ServerUnreachable(f"cannot reach {base}: {exc}") from None
    except requests.RequestException as exc:
        summary.failed.append(f"{label}: {exc}")
        return
    summary.requests += 1
    if response.status_code >= 400:
        summary.failed.append(f"{label}: HTTP {response.status_code} {describe_outcome(response_json(response))}")
        return
    for index, what in count_entries(bundle, response_json(response)):
        if what.startswith("HTTP") and single:  # name the resource's own elements, as a PUT's answer would
            summary.failed.append(f"{label}: {what.replace('Bundle.entry[0].resource', document['resourceType'])}")
        elif what.startswith("HTTP"):
            summary.failed.append(f"{label} entry[{index}]: {what}")
        elif what:
            summary.count(what)


def response_json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {"text": response.text[:200]}
    return body if isinstance(body, dict) else {}


def describe_outcome(outcome: dict) -> str:
    """The issues of an OperationOutcome in one line (diagnostics at expression)."""
    if "text" in outcome and "issue" not in outcome:
        return str(outcome["text"])
    return "; ".join(i.get("diagnostics", "") + (f" at {', '.join(i['expression'])}" if i.get("expression") else "")
                     for i in outcome.get("issue", []) if isinstance(i, dict))


def count_entries(bundle: dict, answer: dict) -> Iterator[tuple[int, str]]:
    """(entry index, "created" | "updated" | "unchanged" | "deleted" | "" for a read |
    "HTTP <status> <why>" for a failed entry), from the response entries (in request order)."""
    requests_sent = [e.get("request", {}) for e in bundle.get("entry") or [] if isinstance(e, dict)]
    for index, entry in enumerate(answer.get("entry") or []):
        method = str(requests_sent[index].get("method", "")).upper() if index < len(requests_sent) else ""
        response = entry.get("response") or {}
        yield index, entry_result(method, str(response.get("status", "")), response.get("outcome") or {})


# fhirimg's informational outcomes of writes that wrote nothing (fhirimg/bundle/execute.py,
# fhirimg/interactions.py): "content unchanged; no new version", "ifNoneExist matched an
# existing resource; nothing created", "... was already deleted", "... nothing to delete".
NOTHING_WRITTEN = ("unchanged", "nothing created", "nothing to delete", "nothing deleted", "already deleted")


def entry_result(method: str, status: str, outcome: dict) -> str:
    code = status.split(" ", 1)[0]
    if not code.startswith(("2", "3")):
        return f"HTTP {status} {describe_outcome(outcome)}".strip()
    if method in ("GET", "HEAD"):
        return ""
    said = " ".join(i.get("diagnostics", "") for i in outcome.get("issue", []) if isinstance(i, dict)).lower()
    if any(marker in said for marker in NOTHING_WRITTEN):
        return "unchanged"
    if code == "201":
        return "created"
    return "deleted" if method == "DELETE" else "updated"
