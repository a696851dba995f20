"""Live progress of a running transfer (fhirimg.transfer.progress): what the console's bars
and throughput chart are drawn from while a Task runs."""
from __future__ import annotations

import pytest
from redis import Redis

from fhirimg.transfer.pipeline import Span
from fhirimg.transfer.progress import ProgressSampler, read_progress, redis_publisher
from fhirimg.transfer.tasks import run_retrieve

from .dicomfactory import make_study
from .site import make_site


def test_a_snapshot_says_which_steps_run_and_what_arrived():
    clock = {"mono": 100.0}
    spans = {"qido": Span(), "metadata": Span(), "retrieve": Span()}
    spans["qido"].begin(100.0)
    spans["qido"].end(100.5)
    spans["retrieve"].begin(100.5)
    received = {"bytes": 0}
    sampler = ProgressSampler(lambda s: None, spans, lambda: received["bytes"], lambda: 3,
                              monotonic=lambda: clock["mono"], wall=lambda: clock["mono"] + 1_000_000)
    first = sampler.snapshot()
    clock["mono"] += 1.0
    received["bytes"] = 5_000_000
    second = sampler.snapshot()
    assert first["steps"]["qido"] == {"started_ms": 1_000_100_000, "ended_ms": 1_000_100_500}
    assert second["steps"]["retrieve"]["ended_ms"] is None and "metadata" not in second["steps"]
    assert second["samples"] == [[1_000_100_000, 0, 3], [1_000_101_000, 5_000_000, 3]]
    assert second["bytes"] == 5_000_000 and second["instances"] == 3


def test_a_publisher_that_fails_never_fails_the_transfer():
    def broken(snapshot):
        raise ConnectionError("redis went away")
    sampler = ProgressSampler(broken, {"qido": Span()}, lambda: 0, lambda: 0, every=0.01)
    with sampler:
        pass  # the final send raises inside; nothing escapes


@pytest.fixture(scope="module")
def progress_study(orthanc):
    study = make_study(series=2, instances=4, rows=64, columns=64, seed=33)
    orthanc.upload_study(study)
    return study


def test_a_running_transfer_publishes_its_progress_to_redis(tmp_path, orthanc, progress_study, redis_server):
    site = make_site(tmp_path)
    study_id = site.add_study(orthanc.dicomweb + f"/studies/{progress_study.study_uid}", progress_study.study_uid)
    task_id = site.start_retrieve(study_id, "stat")
    connection = Redis.from_url(redis_server.url)
    ctx = site.context()
    ctx.progress = lambda tid: redis_publisher(connection, tid)
    assert run_retrieve(task_id, ctx) == "completed"
    progress = read_progress(connection, task_id)
    assert set(progress["steps"]) == {"qido", "metadata", "retrieve"}
    assert all(step["ended_ms"] >= step["started_ms"] for step in progress["steps"].values())
    assert progress["instances"] == 8 and progress["bytes"] >= sum(len(b) for b in progress_study.instances.values())
    assert progress["samples"][-1][1:] == [progress["bytes"], 8]
    assert 0 < connection.ttl(f"fhirimg:transfer-progress:{task_id}") <= 3600
