"""The retrieve Task as FHIR data: its initial shape, its business status and its outputs.

Task.output is where an operator sees where the time went: series/instances expected
and stored, bytes, the duration of each of the three steps, time to first instance,
throughput, retries, and every rejected object with the reason.
"""
from __future__ import annotations

from .pipeline import STEPS, TransferReport

CODE_SYSTEM = "http://fhirimg.org/fhir/CodeSystem/transfer"
STEP_SYSTEM = "http://fhirimg.org/fhir/CodeSystem/transfer-step"
OUTPUT_SYSTEM = "http://fhirimg.org/fhir/CodeSystem/transfer-output"
UCUM = "http://unitsofmeasure.org"
MAX_REJECTIONS_SHOWN = 100

STEP_DISPLAY = {
    "queued": "waiting for a worker",
    "qido": "step 1 of 3: QIDO-RS, what exists",
    "metadata": "step 2 of 3: WADO-RS series metadata",
    "retrieve": "step 3 of 3: WADO-RS retrieve of pixel data",
    "done": "all instances stored",
    "failed": "transfer failed",
    "cancelled": "transfer cancelled",
}


def retrieve_task_resource(study_id: str, priority: str, now: str) -> dict:
    """A new Task asking for the DICOM of ImagingStudy/{study_id} (FHIR asynchronous pattern)."""
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "priority": priority,
        "code": {"coding": [{"system": CODE_SYSTEM, "code": "retrieve",
                             "display": "Retrieve the study's DICOM instances"}]},
        "focus": {"reference": f"ImagingStudy/{study_id}"},
        "authoredOn": now,
        "lastModified": now,
        "businessStatus": business_status("queued"),
    }


def business_status(step: str) -> dict:
    return {"coding": [{"system": STEP_SYSTEM, "code": step}], "text": STEP_DISPLAY.get(step, step)}


def status_reason(text: str) -> dict:
    """R5 Task.statusReason is a CodeableReference; the reason is free text."""
    return {"concept": {"text": text[:1000]}}


def output_type(code: str, text: str | None = None) -> dict:
    return {"coding": [{"system": OUTPUT_SYSTEM, "code": code}], "text": text or code}


def count_output(code: str, value: int) -> dict:
    return {"type": output_type(code), "valueInteger": int(value)}


def seconds_output(code: str, seconds: float) -> dict:
    return {"type": output_type(code), "valueQuantity": {"value": round(seconds, 4), "unit": "s",
                                                         "system": UCUM, "code": "s"}}


def rate_output(code: str, value: float, unit: str, ucum: str) -> dict:
    return {"type": output_type(code), "valueQuantity": {"value": round(value, 3), "unit": unit,
                                                         "system": UCUM, "code": ucum}}


def report_outputs(report: TransferReport, retries: int = 0) -> list[dict]:
    """Task.output entries describing one run of the three steps."""
    outcome = report.outcome
    expected = report.study.instance_count
    stored_total = expected - len(report.missing)
    outputs = [
        count_output("series-expected", len(report.study.series)),
        count_output("instances-expected", expected),
        count_output("instances-stored", stored_total),
        count_output("instances-retrieved", outcome.stored if outcome else 0),
        count_output("instances-skipped", outcome.skipped if outcome else 0),
        count_output("instances-missing", len(report.missing)),
        {"type": output_type("bytes-retrieved"), "valueInteger64": str(outcome.bytes if outcome else 0)},
        count_output("study-requests", outcome.study_requests if outcome else 0),
        count_output("series-requests", outcome.series_requests if outcome else 0),
        count_output("instance-requests", outcome.instance_requests if outcome else 0),
        count_output("series-fallbacks", outcome.fallbacks if outcome else 0),
        count_output("retries", retries),
    ]
    for step in STEPS:
        if step in report.durations:
            outputs.append(seconds_output(f"duration-{step}", report.durations[step]))
    total = sum(report.durations.values())
    outputs.append(seconds_output("duration-total", total))
    if outcome is not None and outcome.store_seconds:
        # Making objects durable (fsync + rename, or the upload) and indexing them: beside step 3.
        outputs.append(seconds_output("duration-store", outcome.store_seconds))
    if report.time_to_first_instance is not None:
        outputs.append(seconds_output("time-to-first-instance", report.time_to_first_instance))
    retrieve_seconds = report.durations.get("retrieve", 0.0)
    if outcome and outcome.bytes and retrieve_seconds > 0:
        outputs.append(rate_output("retrieve-throughput", outcome.bytes / retrieve_seconds / 1e6, "MB/s", "MBy/s"))
        outputs.append(rate_output("retrieve-instance-rate", outcome.stored / retrieve_seconds, "instances/s", "/s"))
    outputs.extend(rejection_outputs(report))
    return outputs


def rejection_outputs(report: TransferReport) -> list[dict]:
    """One output per refused object (bounded), so a bad source is visible in the Task."""
    rejections = distinct(list(report.study.rejections) + (list(report.outcome.rejections) if report.outcome else []))
    out = [count_output("instances-rejected", len(rejections))] if rejections else []
    for rejection in rejections[:MAX_REJECTIONS_SHOWN]:
        where = "/".join(x for x in (rejection.series_uid, rejection.sop_uid) if x)
        text = f"{rejection.reason}: {rejection.detail}" + (f" ({where})" if where else "")
        out.append({"type": output_type("rejected", rejection.reason), "valueString": text[:1000]})
    return out


def distinct(rejections: list) -> list:
    """Each rejected instance once: a part refused again on a retry or a fallback fetch is the
    same instance (3 bad instances were counted as 15)."""
    seen, out = set(), []
    for rejection in rejections:
        key = (rejection.series_uid, rejection.sop_uid) if rejection.sop_uid else id(rejection)
        if key not in seen:
            seen.add(key)
            out.append(rejection)
    return out


def output_value(task: dict, code: str):
    """The value of the first Task.output with this code (for reports and tests)."""
    for output in task.get("output") or []:
        codings = (output.get("type") or {}).get("coding") or []
        if any(c.get("system") == OUTPUT_SYSTEM and c.get("code") == code for c in codings):
            for key, value in output.items():
                if key.startswith("value"):
                    return value.get("value") if isinstance(value, dict) else value
    return None
