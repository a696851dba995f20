"""``fhirimg transfer-report TASK_ID``: a finished Task's step timings as a small table."""
from __future__ import annotations

from .pipeline import STEPS
from .taskoutput import output_value

STEP_NAMES = {"qido": "1 QIDO-RS (what exists)", "metadata": "2 series metadata", "retrieve": "3 pixel data"}


def format_task_report(task: dict) -> str:
    """Where the time went: one line per step with its share, then counts and bytes."""
    durations = {step: output_value(task, f"duration-{step}") for step in STEPS}
    total = sum(d for d in durations.values() if d) or 0.0
    nbytes = int(output_value(task, "bytes-retrieved") or 0)
    lines = [f"Task/{task.get('id')}  status={task.get('status')}  priority={task.get('priority', 'routine')}",
             f"focus {task.get('focus', {}).get('reference', '?')}"]
    reason = (task.get("statusReason") or {}).get("concept", {}).get("text")
    if reason:
        lines.append(f"reason: {reason}")
    lines += ["", f"{'step':<26}{'seconds':>10}{'share':>8}", "-" * 44]
    for step in STEPS:
        seconds = durations[step]
        if seconds is None:
            lines.append(f"{STEP_NAMES[step]:<26}{'-':>10}{'':>8}")
            continue
        share = f"{100 * seconds / total:.0f}%" if total else "-"
        slowest = "  <- slowest" if total and seconds == max(d or 0 for d in durations.values()) else ""
        lines.append(f"{STEP_NAMES[step]:<26}{seconds:>10.3f}{share:>8}{slowest}")
    lines.append(f"{'total':<26}{total:>10.3f}")
    lines.append("")
    retrieve = durations["retrieve"] or 0
    rate = f", {nbytes / retrieve / 1e6:.1f} MB/s in step 3" if retrieve and nbytes else ""
    lines.append(f"series {output_value(task, 'series-expected')}, instances "
                 f"{output_value(task, 'instances-stored')}/{output_value(task, 'instances-expected')} stored "
                 f"({output_value(task, 'instances-retrieved')} fetched, {output_value(task, 'instances-skipped')} "
                 f"already held), {nbytes / 1e6:.1f} MB{rate}")
    first = output_value(task, "time-to-first-instance")
    if first is not None:
        lines.append(f"time to first instance {first:.3f} s; retries {output_value(task, 'retries')}; "
                     f"rejected {output_value(task, 'instances-rejected') or 0}")
    return "\n".join(lines)
