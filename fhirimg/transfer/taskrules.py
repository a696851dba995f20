"""What a client may change about a Task: only the worker moves a Task through its
lifecycle; a client may cancel an active one and nothing else (a completed Task PATCHed to
``cancelled`` kept businessStatus "done", one set back to ``in-progress`` was never run)."""
from __future__ import annotations

from ..errors import Conflict
from .tasks import ACTIVE_STATUSES


def check_client_task_change(res_id: str, before: dict | None, after: dict | None) -> None:
    """409 naming Task.status unless the change keeps the status or cancels an active Task."""
    if before is None or after is None:
        return  # a new Task, or a delete: the access decision covers those
    old, new = before.get("status"), after.get("status")
    if old == new or (new == "cancelled" and old in ACTIVE_STATUSES):
        return
    raise Conflict(f"Task/{res_id} is {old}: a client may only cancel an active Task (status one of "
                   f"{', '.join(sorted(ACTIVE_STATUSES))}); moving it to {new} is the worker's", ["Task.status"],
                   resource=("Task", res_id))
