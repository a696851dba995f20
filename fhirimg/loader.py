"""`fhirimg load`: send resources and Bundles from files to a FHIR server."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import requests
from tqdm import tqdm

FHIR_JSON = "application/fhir+json"


@dataclass
class LoadSummary:
    sent: int = 0
    resources: int = 0
    failed: list[str] = field(default_factory=list)

    def describe(self) -> str:
        text = f"{self.sent} files sent, {self.resources} resources written, {len(self.failed)} failed"
        return "\n".join([text, *self.failed])


def find_json_files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        files.extend(sorted(path.rglob("*.json")) if path.is_dir() else [path])
    return files


def request_for(document: dict, base: str) -> tuple[str, str]:
    """(method, url): Bundles of type transaction/batch go to the base, a resource with an id
    is PUT (update-as-create keeps example ids), one without is POSTed."""
    res_type = document.get("resourceType")
    if res_type == "Bundle" and document.get("type") in ("transaction", "batch"):
        return "POST", base
    if document.get("id"):
        return "PUT", f"{base}/{res_type}/{document['id']}"
    return "POST", f"{base}/{res_type}"


def load_paths(paths: list[str], base: str, progress: bool = True, session=None) -> LoadSummary:
    session = session or requests.Session()
    summary = LoadSummary()
    files = find_json_files(paths)
    for path in tqdm(files, disable=not progress, unit="file"):
        summary.sent += 1
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            method, url = request_for(document, base.rstrip("/"))
            response = session.request(method, url, data=json.dumps(document).encode(),
                                       headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}, timeout=300)
        except (OSError, ValueError, requests.RequestException) as exc:
            summary.failed.append(f"{path}: {exc}")
            continue
        if response.status_code >= 400:
            summary.failed.append(f"{path}: HTTP {response.status_code} {describe_outcome(response)}")
        else:
            summary.resources += count_written(document, response)
    return summary


def describe_outcome(response) -> str:
    try:
        issues = response.json().get("issue", [])
        return "; ".join(f"{i.get('diagnostics', '')} at {', '.join(i.get('expression', []))}" for i in issues)
    except ValueError:
        return response.text[:200]


def count_written(document: dict, response) -> int:
    if document.get("resourceType") != "Bundle":
        return 1
    try:
        entries = response.json().get("entry", [])
    except ValueError:
        return 0
    return sum(1 for e in entries if str(e.get("response", {}).get("status", "")).startswith(("200", "201")))
