"""What /metrics reads at scrape time: Tasks, step durations, queues, replication, blob store."""
from __future__ import annotations

import time
from datetime import timedelta

from redis import Redis
from rq import Queue
from sqlalchemy import insert

from fhirimg.metrics.instruments import make_instruments
from fhirimg.metrics.steps import FileCursor, StepDurations, latest_seq
from fhirimg.replicate.schema import replication_link
from fhirimg.transfer.schema import dicom_instance

from .conftest import scrape, value

OUTPUT = "http://fhirimg.org/fhir/CodeSystem/transfer-output"


def make_task(status: str = "requested", durations: dict[str, float] | None = None, **extra) -> dict:
    task = {"resourceType": "Task", "status": status, "intent": "order", **extra}
    if durations:
        task["output"] = [{"type": {"coding": [{"system": OUTPUT, "code": f"duration-{step}"}]},
                           "valueQuantity": {"value": seconds, "unit": "s", "system": "http://unitsofmeasure.org",
                                             "code": "s"}} for step, seconds in durations.items()]
    return task


def run_task(repo, final: str, durations: dict[str, float]) -> str:
    """requested -> in-progress -> `final` with the step durations, as the worker writes it."""
    task = repo.create("Task", make_task("requested"))
    repo.update("Task", task.res_id, {**make_task("in-progress"), "id": task.res_id})
    repo.update("Task", task.res_id, {**make_task(final, durations), "id": task.res_id})
    return task.res_id


def test_tasks_are_counted_by_status_with_every_status_shown(make_app):
    app = make_app(anonymous=True)
    repo = app.extensions["fhirimg.repository"]
    for status in ("requested", "requested", "in-progress", "completed", "failed", "failed", "failed"):
        repo.create("Task", make_task(status))
    gone = repo.create("Task", make_task("completed"))
    repo.delete("Task", gone.res_id)
    body = scrape(app.test_client())
    expected = {"requested": 2, "in-progress": 1, "completed": 1, "failed": 3, "on-hold": 0, "draft": 0}
    for status, count in expected.items():
        assert value(body, "fhirimg_tasks", status=status) == count, status


def test_step_durations_are_observed_once_for_each_run_that_ends(make_app):
    app = make_app(anonymous=True)
    repo = app.extensions["fhirimg.repository"]
    client = app.test_client()
    task_id = run_task(repo, "completed", {"qido": 1.5, "metadata": 0.2, "retrieve": 42.0, "total": 43.7})
    run_task(repo, "failed", {"qido": 3.0, "total": 3.0})
    body = scrape(client)
    completed = {"step": "retrieve", "status": "completed"}
    assert value(body, "fhirimg_transfer_step_duration_seconds_count", **completed) == 1
    assert value(body, "fhirimg_transfer_step_duration_seconds_sum", **completed) == 42.0
    assert value(body, "fhirimg_transfer_step_duration_seconds_bucket", le="30.0", **completed) == 0
    assert value(body, "fhirimg_transfer_step_duration_seconds_bucket", le="60.0", **completed) == 1
    assert value(body, "fhirimg_transfer_step_duration_seconds_sum", step="qido", status="failed") == 3.0
    # A later edit of the ended Task is no new run; another scrape counts nothing again.
    repo.update("Task", task_id, {**make_task("completed", {"qido": 1.5, "retrieve": 42.0}), "id": task_id,
                                  "note": [{"text": "checked"}]})
    body = scrape(client)
    assert value(body, "fhirimg_transfer_step_duration_seconds_count", **completed) == 1
    assert value(body, "fhirimg_transfer_step_duration_seconds_count", step="qido", status="completed") == 1


def test_runs_that_ended_before_the_server_started_are_not_counted(make_app):
    first = make_app(anonymous=True)
    run_task(first.extensions["fhirimg.repository"], "completed", {"qido": 1.0})
    body = scrape(make_app(anonymous=True).test_client())
    assert value(body, "fhirimg_transfer_step_duration_seconds_count", step="qido", status="completed") is None


def test_a_task_created_already_ended_is_not_a_run(make_app):
    app = make_app(anonymous=True)
    app.extensions["fhirimg.repository"].create("Task", make_task("completed", {"qido": 1.0}))
    body = scrape(app.test_client())
    assert value(body, "fhirimg_transfer_step_duration_seconds_count", step="qido", status="completed") is None


def test_queue_depths_come_from_redis(make_app, redis_server):
    connection = Redis.from_url(redis_server.url)
    routine, urgent = Queue("fhirimg", connection=connection), Queue("fhirimg-urgent", connection=connection)
    routine.enqueue("os.getpid")
    routine.enqueue("os.getpid")
    routine.enqueue_in(timedelta(hours=1), "os.getpid")
    urgent.enqueue("os.getpid")
    body = scrape(make_app(anonymous=True, redis_url=redis_server.url).test_client())
    assert value(body, "fhirimg_queue_jobs", queue="fhirimg", state="queued") == 2
    assert value(body, "fhirimg_queue_jobs", queue="fhirimg", state="scheduled") == 1
    assert value(body, "fhirimg_queue_jobs", queue="fhirimg", state="failed") == 0
    assert value(body, "fhirimg_queue_jobs", queue="fhirimg-urgent", state="queued") == 1
    assert value(body, "fhirimg_metrics_source_up", source="redis") == 1


def test_a_scrape_with_redis_down_still_answers_and_says_so(make_app, redis_server):
    client = make_app(anonymous=True, redis_url=redis_server.url,
                      metrics={"readiness_timeout": 0.5}).test_client()
    redis_server.stop()
    body = scrape(client)
    assert value(body, "fhirimg_metrics_source_up", source="redis") == 0
    assert value(body, "fhirimg_metrics_source_up", source="database") == 1
    assert "fhirimg_queue_jobs{" not in body
    assert value(body, "fhirimg_tasks", status="requested") == 0


def test_replication_lag_and_changes_per_link(make_app, engine):
    now_ms = int(time.time() * 1000)
    with engine.begin() as conn:
        conn.execute(insert(replication_link).values(
            name="from-site-b", direction="pull", url="https://b.example.org/fhir", applied=7, skipped=3,
            conflicts=1, rejected=2, caught_up_ms=now_ms - 30_000, last_success_ms=now_ms - 30_000))
        conn.execute(insert(replication_link).values(
            name="to-site-c", direction="push", url="https://c.example.org/fhir", applied=0, skipped=0,
            conflicts=0, rejected=0, last_error_ms=now_ms - 5_000))
    body = scrape(make_app(anonymous=True).test_client())
    b = {"link": "from-site-b", "direction": "pull"}
    assert 30 <= value(body, "fhirimg_replication_lag_seconds", **b) < 40
    assert value(body, "fhirimg_replication_changes_total", outcome="applied", **b) == 7
    assert value(body, "fhirimg_replication_changes_total", outcome="rejected", **b) == 2
    assert value(body, "fhirimg_replication_last_success_timestamp_seconds", **b) == (now_ms - 30_000) / 1000
    c = {"link": "to-site-c", "direction": "push"}
    assert value(body, "fhirimg_replication_lag_seconds", **c) is None  # never caught up: no figure
    assert value(body, "fhirimg_replication_last_error_timestamp_seconds", **c) == (now_ms - 5_000) / 1000


def store_instances(engine, *sizes: int) -> None:
    with engine.begin() as conn:
        for size in sizes:
            sop = f"1.2.3.{time.monotonic_ns()}"
            conn.execute(insert(dicom_instance).values(
                sop_uid=sop, study_uid="1.2.3", series_uid="1.2.3.4", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1", size=size, sha256="0" * 64, path=f"1.2.3/1.2.3.4/{sop}.dcm",
                stored_ms=0, attributes=b"{}"))


def test_blob_store_bytes_and_instances_are_cached_between_scrapes(make_app, engine):
    store_instances(engine, 100, 250)
    client = make_app(anonymous=True, metrics={"cache_seconds": 3600}).test_client()
    body = scrape(client)
    assert value(body, "fhirimg_blob_store_bytes") == 350
    assert value(body, "fhirimg_blob_store_instances") == 2
    store_instances(engine, 1000)
    for _ in range(3):  # within cache_seconds: not even recomputed in the background
        assert value(scrape(client), "fhirimg_blob_store_bytes") == 350
        time.sleep(0.2)


def test_a_stale_total_is_recomputed_in_the_background_while_scrapes_answer(make_app, engine):
    store_instances(engine, 100)
    client = make_app(anonymous=True, metrics={"cache_seconds": 0}).test_client()
    assert value(scrape(client), "fhirimg_blob_store_bytes") == 100  # the first: computed then
    store_instances(engine, 20)
    assert value(scrape(client), "fhirimg_blob_store_bytes") == 100  # stale, answered at once
    deadline = time.monotonic() + 10
    while value(scrape(client), "fhirimg_blob_store_bytes") != 120 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert value(scrape(client), "fhirimg_blob_store_bytes") == 120
    # with cache_seconds 0 every scrape starts a recompute: let the last one end before the
    # fixture drops the schema under it (a deadlock in PostgreSQL otherwise)
    refresher = client.application.extensions["fhirimg.metrics"].gauges.totals.refresher
    if refresher is not None:
        refresher.join(10)


def test_blob_store_free_space_is_shown_once_the_store_exists(make_app, tmp_path):
    (tmp_path / "var" / "blobs").mkdir(parents=True)
    body = scrape(make_app(anonymous=True).test_client())
    assert value(body, "fhirimg_blob_store_free_bytes") > 0


def observed(histogram, step: str, status: str) -> float:
    return sum(s.value for metric in histogram.collect() for s in metric.samples
               if s.name.endswith("_count") and s.labels == {"step": step, "status": status})


def test_processes_sharing_the_position_count_each_run_once(make_app, engine, tmp_path):
    repo = make_app(anonymous=True).extensions["fhirimg.repository"]
    first, second = FileCursor(tmp_path), FileCursor(tmp_path)
    first.start_at(latest_seq(engine))
    second.start_at(0)  # a later process does not move the position the first one set
    a = StepDurations(engine, make_instruments().step_durations, first)
    b = StepDurations(engine, make_instruments().step_durations, second)
    run_task(repo, "completed", {"qido": 1.0})
    a.fold()
    run_task(repo, "completed", {"qido": 1.0})
    run_task(repo, "completed", {"qido": 1.0})
    b.fold()
    a.fold()
    assert observed(a.histogram, "qido", "completed") + observed(b.histogram, "qido", "completed") == 3
