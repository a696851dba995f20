"""Retrieve Tasks: the FHIR Task is the truth about a transfer, the RQ job only transport.

``start_retrieve`` creates (or finds) the Task for an ImagingStudy; ``run_retrieve`` drives
it requested → in-progress → completed | failed | cancelled, naming the current step in
``businessStatus`` and recording counts, bytes and step durations in ``Task.output``.
Every Task write is a compare-and-set on its version, so a client cancelling the Task
(PUT/PATCH status=cancelled) is seen by the worker at its next write or instance.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import threading

from sqlalchemy import delete, select, update

from fhirimg.errors import Conflict, FhirError, NotFound, PreconditionFailed
from fhirimg.resources import validate_resource
from fhirimg.store import Repository
from fhirimg.store.records import format_instant

from .blobstore import BlobStore
from .client import SourceError, TransferClient
from .netpolicy import HostRefused
from .pipeline import TransferReport, transfer_study
from .guard import Cancelled
from .retrieve import RetrieveOptions
from .schema import active_retrieve, dicom_instance
from .sources import SourcePlan, TaskFailure, plan_source
from .studyupdate import ensure_own_endpoint, reconciled_imaging_study
from .taskoutput import business_status, report_outputs, retrieve_task_resource, status_reason

if TYPE_CHECKING:
    from fhirimg.dimse.scu import ScuSettings

log = logging.getLogger("fhirimg.transfer")

ACTIVE_STATUSES = frozenset({"draft", "requested", "received", "accepted", "ready", "in-progress", "on-hold"})
WRITE_ATTEMPTS = 8


@dataclass
class TransferContext:
    """Everything run_retrieve needs, passed in (no globals): storage, HTTP, files, clock."""

    repo: Repository
    client: TransferClient
    blobstore: BlobStore
    options: RetrieveOptions
    own_dicomweb_base: str
    qido_page_size: int = 200
    lease_seconds: float = 60.0
    max_runs: int = 5
    clock: Callable[[], int] | None = None  # epoch milliseconds; defaults to the repository's
    # Live progress for the console (task id -> where snapshots go); None: nobody listens.
    progress: Callable[[str], Callable[[dict], None]] | None = None
    # Our DICOM node for sources reached over DIMSE ([dicom] section); None: its defaults.
    dimse: ScuSettings | None = None

    def now_ms(self) -> int:
        return (self.clock or self.repo.clock)()


def start_retrieve(uow, study_id: str, priority: str, now_ms: int) -> tuple[object, bool]:
    """Create the retrieve Task for an ImagingStudy, or return the one still active.

    Returns (Task StoredVersion, created). Runs inside the caller's transaction.
    """
    study = uow.read("ImagingStudy", study_id)
    if study is None or study.is_deleted:
        raise NotFound(f"ImagingStudy/{study_id} does not exist", ["ImagingStudy.id"])
    row = uow.conn.execute(select(active_retrieve).where(active_retrieve.c.study_id == study_id)).first()
    if row is not None:
        task = uow.read("Task", row.task_id)
        if task is not None and not task.is_deleted and task.resource.get("status") in ACTIVE_STATUSES:
            return task, False
        uow.conn.execute(delete(active_retrieve).where(active_retrieve.c.study_id == study_id))
    resource = retrieve_task_resource(study_id, priority, format_instant(now_ms))
    validate_resource(resource, "Task")
    task = uow.create("Task", resource)
    uow.conn.execute(active_retrieve.insert().values(study_id=study_id, task_id=task.res_id,
                                                     priority=priority, created_ms=now_ms, runs=0))
    return task, True


def run_retrieve(task_id: str, ctx: TransferContext) -> str:
    """Carry out one retrieve Task to its end; returns the Task's final status."""
    task = ctx.repo.read("Task", task_id)
    if task is None or task.is_deleted or task.resource.get("status") not in ACTIVE_STATUSES:
        release_active(ctx.repo, task_id)
        return "gone" if task is None or task.is_deleted else task.resource["status"]
    runs = previous_runs(ctx.repo, task_id)
    if runs >= ctx.max_runs:
        # Every earlier run died (worker killed, disk full, database gone): stop the loop.
        return finish(ctx, task_id, "failed", f"gave up after {runs} runs that did not finish; "
                                              "see the worker logs", None)
    with Heartbeat(ctx.repo, task_id, ctx.lease_seconds / 4, ctx.now_ms):
        return run_started_retrieve(task_id, task.resource, ctx)


def previous_runs(repo: Repository, task_id: str) -> int:
    with repo.reading() as uow:
        runs = uow.conn.execute(select(active_retrieve.c.runs)
                                .where(active_retrieve.c.task_id == task_id)).scalar()
    return int(runs or 0)


def run_started_retrieve(task_id: str, task: dict, ctx: TransferContext) -> str:
    try:
        set_task(ctx, task_id, lambda t: mark_in_progress(t, ctx.now_ms()))
        plan = plan_source(ctx.repo, task, ctx.own_dicomweb_base)
        if plan.is_dimse:
            report = transfer_with_status_dimse(ctx, task_id, plan)
        else:
            for address in {plan.base_url, *plan.series_bases.values()}:
                ctx.client.policy.check_url(address)  # before any request: refused hosts get none
            report = transfer_with_status(ctx, task_id, plan)
        return finish_transfer(ctx, task_id, plan, report)
    except Cancelled:
        return finish(ctx, task_id, "cancelled", "cancelled by request", None)
    except HostRefused as exc:
        log.warning("Task/%s: endpoint address refused: %s", task_id, exc)
        return finish(ctx, task_id, "failed", f"endpoint host {exc.host or '(unknown)'} refused by the transfer "
                      "allow-list (transfer.allowed_hosts; the server log says why)", None)
    except SourceError as exc:
        log.warning("Task/%s failed: %s", task_id, exc)
        return finish(ctx, task_id, "failed", exc.public(), None)
    except TaskFailure as exc:
        return finish(ctx, task_id, "failed", str(exc), None)
    except (FhirError, ValueError) as exc:
        return finish(ctx, task_id, "failed", f"{type(exc).__name__}: {exc}", None)


def transfer_with_status(ctx: TransferContext, task_id: str, plan: SourcePlan) -> TransferReport:
    return transfer_study(ctx.client, following(ctx, plan), plan.base_url, plan.study_uid, ctx.options,
                          ctx.qido_page_size, should_stop=CancellationCheck(ctx.repo, task_id),
                          on_step=step_recorder(ctx, task_id), series_bases=plan.series_bases,
                          on_progress=ctx.progress(task_id) if ctx.progress else None)


def transfer_with_status_dimse(ctx: TransferContext, task_id: str, plan: SourcePlan) -> TransferReport:
    """The three steps over DIMSE; every node is checked by the allow-list before any association."""
    from fhirimg.dimse.scu import ScuSettings, parse_dimse_address
    from fhirimg.dimse.source import DimseSource, checked_peer, transfer_study_dimse

    policy = ctx.client.policy
    peer = checked_peer(policy, parse_dimse_address(plan.dimse_address))
    series_peers = {uid: checked_peer(policy, parse_dimse_address(address))
                    for uid, address in plan.series_dimse.items()}
    source = DimseSource(peer, ctx.dimse or ScuSettings(), series_peers)
    return transfer_study_dimse(source, following(ctx, plan), plan.study_uid, ctx.options,
                                should_stop=CancellationCheck(ctx.repo, task_id), on_step=step_recorder(ctx, task_id),
                                on_progress=ctx.progress(task_id) if ctx.progress else None)


def following(ctx: TransferContext, plan: SourcePlan):
    """The blob store, with the Task's ImagingStudy updated in each group's transaction."""
    from .follow import StudyFollowingStore
    return StudyFollowingStore(ctx.blobstore, ctx.repo, plan.study_id)


def step_recorder(ctx: TransferContext, task_id: str) -> Callable[[str], None]:
    """Writes the step a transfer enters into Task.businessStatus."""
    def on_step(step: str) -> None:
        set_task(ctx, task_id, lambda t: {**t, "businessStatus": business_status(step),
                                          "lastModified": format_instant(ctx.now_ms())})
    return on_step


def finish_transfer(ctx: TransferContext, task_id: str, plan: SourcePlan, report: TransferReport) -> str:
    """Update the ImagingStudy to match the source, then close the Task."""
    is_complete = not report.missing and report.study.instance_count > 0
    if is_complete:
        # A partial transfer leaves the ImagingStudy alone: it must never point at
        # our DICOMweb for instances we do not have.
        fill_sop_classes(ctx.blobstore, report)
        endpoint_ref = ensure_own_endpoint(ctx.repo, ctx.own_dicomweb_base)
        update_imaging_study(ctx.repo, plan.study_id, report, endpoint_ref)
        return finish(ctx, task_id, "completed", None, report)
    if report.study.instance_count == 0:
        return finish(ctx, task_id, "failed", "the source lists no instances for this study", report)
    return finish(ctx, task_id, "failed", f"{len(report.missing)} of {report.study.instance_count} "
                                          "instances could not be retrieved", report)


def fill_sop_classes(blobstore: BlobStore, report: TransferReport) -> None:
    """SOP classes neither QIDO nor metadata gave are read from what was stored."""
    unknown = [i for s in report.study.series for i in s.instances.values() if not i.sop_class_uid]
    if not unknown:
        return
    table = dicom_instance
    with blobstore.engine.connect() as conn:
        rows = conn.execute(select(table.c.sop_uid, table.c.sop_class_uid)
                            .where(table.c.study_uid == report.study.study_uid)).all()
    classes = {row.sop_uid: row.sop_class_uid for row in rows}
    for instance in unknown:
        instance.sop_class_uid = classes.get(instance.sop_uid)


def update_imaging_study(repo: Repository, study_id: str, report: TransferReport, endpoint_ref) -> None:
    for _ in range(WRITE_ATTEMPTS):
        with repo.transaction() as uow:
            current = uow.read("ImagingStudy", study_id)
            if current is None or current.is_deleted:
                raise TaskFailure(f"ImagingStudy/{study_id} was deleted during the transfer")
            updated = reconciled_imaging_study(current.resource, report.study, endpoint_ref)
            validate_resource(updated, "ImagingStudy")
            try:
                uow.update("ImagingStudy", study_id, updated, if_match=current.version)
                return
            except (PreconditionFailed, Conflict):
                pass
    raise TaskFailure(f"ImagingStudy/{study_id} kept changing; could not record the transfer")


def mark_in_progress(task: dict, now_ms: int) -> dict:
    task = {**task, "status": "in-progress", "businessStatus": business_status("queued"),
            "lastModified": format_instant(now_ms)}
    period = dict(task.get("executionPeriod") or {})
    period.setdefault("start", format_instant(now_ms))
    task["executionPeriod"] = period
    task.pop("statusReason", None)
    task.pop("output", None)
    return task


def finish(ctx: TransferContext, task_id: str, status: str, reason: str | None,
           report: TransferReport | None) -> str:
    def close(task: dict) -> dict:
        now = format_instant(ctx.now_ms())
        task = {**task, "status": status, "lastModified": now,
                "businessStatus": business_status("done" if status == "completed" else status)}
        task["executionPeriod"] = {**(task.get("executionPeriod") or {}), "end": now}
        if reason:
            task["statusReason"] = status_reason(reason)
        if report is not None:
            task["output"] = report_outputs(report, ctx.client.retries)
        return task

    try:
        set_task(ctx, task_id, close, allow_terminal=(status == "cancelled"))
    except Cancelled:
        status = "cancelled"  # the client cancelled while we were finishing
    release_active(ctx.repo, task_id)
    log.info("retrieve Task/%s %s%s", task_id, status, f": {reason}" if reason else "")
    return status


def set_task(ctx: TransferContext, task_id: str, mutate: Callable[[dict], dict],
             allow_terminal: bool = False) -> None:
    """Compare-and-set a new Task version; a Task someone else ended raises Cancelled."""
    for _ in range(WRITE_ATTEMPTS):
        with ctx.repo.transaction() as uow:
            current = uow.read("Task", task_id)
            if current is None or current.is_deleted:
                raise Cancelled()
            if current.resource.get("status") not in ACTIVE_STATUSES:
                if allow_terminal and current.resource.get("status") == "cancelled":
                    return
                raise Cancelled()
            updated = mutate(copy.deepcopy(current.resource))
            validate_resource(updated, "Task")
            try:
                uow.update("Task", task_id, updated, if_match=current.version)
                return
            except (PreconditionFailed, Conflict):
                pass
    raise TaskFailure(f"Task/{task_id} kept changing; giving up this write")


class Heartbeat:
    """While a worker runs a Task, refresh active_retrieve.heartbeat_ms from a thread.

    The reconciler re-enqueues a Task whose heartbeat is older than the lease: that is
    how a transfer whose worker was SIGKILLed is found even when Redis still calls the
    job "started" (or has lost it altogether).
    """

    def __init__(self, repo: Repository, task_id: str, interval: float, now_ms: Callable[[], int]):
        self.repo, self.task_id, self.interval, self.now_ms = repo, task_id, max(0.05, interval), now_ms
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"heartbeat-{task_id}", daemon=True)

    def __enter__(self) -> "Heartbeat":
        self.beat(started=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a missed beat must not kill the transfer
                log.warning("heartbeat of Task/%s failed", self.task_id, exc_info=True)

    def beat(self, started: bool = False) -> None:
        values = {"heartbeat_ms": self.now_ms()}
        if started:
            values["runs"] = active_retrieve.c.runs + 1
        with self.repo.transaction() as uow:
            uow.conn.execute(update(active_retrieve).where(active_retrieve.c.task_id == self.task_id)
                             .values(**values))


def release_active(repo: Repository, task_id: str) -> None:
    with repo.transaction() as uow:
        uow.conn.execute(delete(active_retrieve).where(active_retrieve.c.task_id == task_id))


class CancellationCheck:
    """Reads the Task's status at most every ``interval`` seconds (called after each instance)."""

    def __init__(self, repo: Repository, task_id: str, interval: float = 0.25,
                 monotonic: Callable[[], float] | None = None):
        import time
        self.repo, self.task_id, self.interval = repo, task_id, interval
        self.monotonic = monotonic or time.monotonic
        self.checked_at = float("-inf")
        self.is_cancelled = False

    def __call__(self) -> bool:
        now = self.monotonic()
        if not self.is_cancelled and now - self.checked_at >= self.interval:
            self.checked_at = now
            task = self.repo.read("Task", self.task_id)
            self.is_cancelled = task is None or task.is_deleted or \
                task.resource.get("status") not in ACTIVE_STATUSES
        return self.is_cancelled
