"""Multiprocess mode: the files of workers that exited are merged, never lost, and a scrape
reads the same totals before and after."""
from __future__ import annotations

import glob
import os

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from fhirimg.metrics.multiprocess import ProcessFiles, archive_dead_files, collect_lock

HELP = "HTTP requests answered."


def write(directory, kind: str, pid: int, entries: dict[tuple, float]) -> None:
    """A process's file as prometheus_client writes it: (metric, sample, labels) -> value."""
    store = MmapedDict(os.path.join(directory, f"{kind}_{pid}.db"))
    for (metric, sample, labels), number in entries.items():
        store.write_value(mmap_key(metric, sample, list(dict(labels)), list(dict(labels).values()), HELP), number,
                          0.0)
    store.close()


def totals(directory) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in ProcessFiles(str(directory)).collect() for s in metric.samples}


def requests(route: str) -> tuple:
    return ("fhirimg_http_requests", "fhirimg_http_requests_total", (("route", route), ("status", "200")))


def bucket(le: str) -> tuple:
    return ("latency", "latency_bucket", (("le", le),))


def worker_files(directory, pid: int, reads: float, searches: float, fast: float, slow: float) -> None:
    write(directory, "counter", pid, {requests("/read"): reads, requests("/search"): searches})
    write(directory, "histogram", pid, {bucket("0.1"): fast, bucket("+Inf"): slow,
                                        ("latency", "latency_sum", ()): fast * 0.05 + slow * 3})


def test_the_files_of_exited_workers_are_merged_and_the_totals_kept(tmp_path):
    worker_files(tmp_path, 101, reads=5, searches=1, fast=6, slow=0)
    worker_files(tmp_path, 102, reads=2, searches=0, fast=1, slow=1)
    worker_files(tmp_path, 200, reads=7, searches=3, fast=8, slow=2)  # still alive
    before = totals(tmp_path)
    assert before[("fhirimg_http_requests_total", (("route", "/read"), ("status", "200")))] == 14
    assert archive_dead_files(str(tmp_path), living={200}) == 4
    assert totals(tmp_path) == before
    names = sorted(os.path.basename(p) for p in glob.glob(str(tmp_path / "*.db")))
    assert names == ["counter_200.db", "counter_archive.db", "histogram_200.db", "histogram_archive.db"]


def test_merging_again_adds_to_the_archive(tmp_path):
    worker_files(tmp_path, 101, reads=5, searches=1, fast=6, slow=0)
    archive_dead_files(str(tmp_path), living=set())
    worker_files(tmp_path, 103, reads=1, searches=1, fast=1, slow=1)
    before = totals(tmp_path)
    archive_dead_files(str(tmp_path), living=set())
    after = totals(tmp_path)
    assert after == before
    assert after[("fhirimg_http_requests_total", (("route", "/read"), ("status", "200")))] == 6
    assert after[("latency_bucket", (("le", "+Inf"),))] == 8  # cumulative: 7 fast + 1 slow


def test_no_merge_while_a_scrape_is_reading(tmp_path):
    worker_files(tmp_path, 101, reads=5, searches=1, fast=6, slow=0)
    import fcntl
    with collect_lock(str(tmp_path), fcntl.LOCK_SH):
        assert archive_dead_files(str(tmp_path), living=set(), wait=0.1) == 0
    assert os.path.exists(tmp_path / "counter_101.db")
    assert archive_dead_files(str(tmp_path), living=set()) == 2


def test_directories_of_masters_that_died_are_removed_at_the_next_start(tmp_path):
    import subprocess
    import sys
    import time
    from fhirimg.metrics.multiprocess import remove_stale_directories
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    made = {}
    for name, pid in (("killed", gone.pid), ("running", os.getpid()), ("starting", None), ("abandoned", None)):
        made[name] = tmp_path / f"fhirimg-metrics-{name}"
        made[name].mkdir()
        if pid is not None:
            (made[name] / "master.pid").write_text(str(pid))
    two_hours_ago = time.time() - 7200
    os.utime(made["abandoned"], (two_hours_ago, two_hours_ago))
    removed = remove_stale_directories(str(tmp_path))
    assert sorted(removed) == sorted([str(made["killed"]), str(made["abandoned"])])
    assert made["running"].exists() and made["starting"].exists()
