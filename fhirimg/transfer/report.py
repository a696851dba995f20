"""``fhirimg transfer-report TASK_ID``: a finished Task's step timings as a small table."""
from __future__ import annotations

from .pipeline import STEPS
from .taskoutput import output_value

STEP_NAMES = {"qido": "1 QIDO-RS (what exists)", "metadata": "2 series metadata", "retrieve": "3 pixel data"}
# Task.output codes the report shows, as (JSON key, output code).
COUNTS = (("series_expected", "series-expected"), ("instances_expected", "instances-expected"),
          ("instances_stored", "instances-stored"), ("instances_retrieved", "instances-retrieved"),
          ("instances_skipped", "instances-skipped"), ("instances_rejected", "instances-rejected"),
          ("retries", "retries"))


def task_report(task: dict) -> dict:
    """The report as plain data (``--json``): null where the Task recorded nothing, e.g. a
    Task that failed before its first step finished."""
    durations = {step: output_value(task, f"duration-{step}") for step in STEPS}
    recorded = [d for d in durations.values() if d is not None]
    nbytes = output_value(task, "bytes-retrieved")
    return {"task": f"Task/{task.get('id')}", "status": task.get("status"),
            "priority": task.get("priority", "routine"), "focus": (task.get("focus") or {}).get("reference"),
            "reason": ((task.get("statusReason") or {}).get("concept") or {}).get("text"),
            "seconds": {**durations, "total": sum(recorded) if recorded else None},
            "store_seconds": output_value(task, "duration-store"),
            **{key: output_value(task, code) for key, code in COUNTS},
            "bytes_retrieved": int(nbytes) if nbytes is not None else None,
            "time_to_first_instance": output_value(task, "time-to-first-instance")}


def format_task_report(task: dict) -> str:
    """Where the time went: one line per step with its share, then counts and bytes."""
    report = task_report(task)
    lines = [f"{report['task']}  status={report['status']}  priority={report['priority']}",
             f"focus {report['focus'] or '?'}"]
    if report["reason"]:
        lines.append(f"reason: {report['reason']}")
    store = report["store_seconds"]
    beside = [f"{'  of which store':<26}{store:>10.3f}  (durable + indexed, beside step 3)"] if store else []
    return "\n".join(lines + ["", *step_lines(report["seconds"]), *beside, "", *count_lines(report)])


def step_lines(seconds: dict) -> list[str]:
    total = seconds["total"] or 0.0
    slowest = max((seconds[step] or 0 for step in STEPS), default=0)
    lines = [f"{'step':<26}{'seconds':>10}{'share':>8}", "-" * 44]
    for step in STEPS:
        value = seconds[step]
        if value is None:
            lines.append(f"{STEP_NAMES[step]:<26}{'-':>10}{'':>8}")
            continue
        share = f"{100 * value / total:.0f}%" if total else "-"
        mark = "  <- slowest" if total and value == slowest else ""
        lines.append(f"{STEP_NAMES[step]:<26}{value:>10.3f}{share:>8}{mark}")
    lines.append(f"{'total':<26}{total:>10.3f}" if seconds["total"] is not None else f"{'total':<26}{'-':>10}")
    return lines


NO_COUNTS = {"failed": "the Task failed before a step finished",
             "cancelled": "the Task was cancelled before a step finished"}


def count_lines(report: dict) -> list[str]:
    """Counts and bytes; a Task that recorded none (failed or cancelled before a step
    finished, or still waiting) says so instead of printing None."""
    if report["instances_expected"] is None:
        return [f"no counts recorded: {NO_COUNTS.get(report['status'], 'no step has finished yet')}"]
    nbytes = report["bytes_retrieved"] or 0
    retrieve = report["seconds"]["retrieve"] or 0
    rate = f", {nbytes / retrieve / 1e6:.1f} MB/s in step 3" if retrieve and nbytes else ""
    lines = [f"series {shown(report['series_expected'])}, instances {shown(report['instances_stored'])}/"
             f"{report['instances_expected']} stored ({shown(report['instances_retrieved'])} fetched, "
             f"{shown(report['instances_skipped'])} already held), {nbytes / 1e6:.1f} MB{rate}"]
    first = report["time_to_first_instance"]
    if first is not None:
        lines.append(f"time to first instance {first:.3f} s; retries {shown(report['retries'])}; "
                     f"rejected {report['instances_rejected'] or 0}")
    return lines


def shown(value) -> str:
    return "?" if value is None else str(value)
