"""The transaction-response / batch-response Bundle (http.html#transaction-response)."""
from __future__ import annotations

from http import HTTPStatus

from .execute import EntryResult
from .parse import ParsedBundle
from ..errors import FhirError, informational_outcome
from ..store.records import format_instant


def response_bundle(parsed: ParsedBundle, base: str, prefer: str = "representation") -> dict:
    """One response entry per request entry, in the request's order; `prefer` is the
    Prefer: return value (minimal | representation | OperationOutcome) for the writes."""
    by_index = {entry.index: entry for entry in parsed.entries}
    entries = []
    for index in range(parsed.size):
        entry = by_index.get(index)
        if entry is None or entry.result is None:
            error = parsed.errors.get(index) or FhirError(500, "exception", "entry was not processed")
            entries.append({"response": {"status": status_line(error.status), "outcome": error.to_outcome()}})
        else:
            entries.append(response_entry(entry, entry.result, base, prefer))
    return {"resourceType": "Bundle", "type": f"{parsed.kind}-response", "entry": entries}


def response_entry(entry, result: EntryResult, base: str, prefer: str) -> dict:
    response: dict = {"status": status_line(result.status)}
    stored = result.stored
    out: dict = {}
    if stored is not None and stored.seq:
        if stored.resource is not None:
            response["location"] = stored.location
        response["etag"] = stored.etag
        response["lastModified"] = format_instant(stored.last_updated_ms)
    if result.error is not None:
        response["outcome"] = result.error.to_outcome()
    elif prefer == "OperationOutcome" and entry.is_write:
        response["outcome"] = informational_outcome(result.diagnostics or HTTPStatus(result.status).phrase)
    body = result.body
    if body is not None:
        if stored is not None:
            out["fullUrl"] = f"{base}/{stored.res_type}/{stored.res_id}"
        out["resource"] = body
    elif prefer == "representation" and entry.is_write and stored is not None and stored.resource is not None:
        out["fullUrl"] = f"{base}/{stored.res_type}/{stored.res_id}"
        out["resource"] = stored.resource
    out["response"] = response
    return out


def status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
