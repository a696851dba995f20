"""/metrics of a real `fhirimg serve` with two gunicorn workers: one scrape adds up what every
worker counted, including workers that have been replaced since."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict

from ..services import descendants, fhirimg_env, free_port, start_fhirimg, wait_for_http
from .conftest import value

METADATA = {"method": "GET", "route": "/fhir/metadata", "status": "200"}


class Served:
    def __init__(self, workdir: Path, anonymous: bool = True, **settings: str):
        self.workdir, self.port = workdir, free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        env = fhirimg_env(anonymous, database_url=f"sqlite:///{workdir / 'fhirimg.db'}", var_dir=workdir / "var",
                          log_level="WARNING", **settings)
        self.tmp = workdir / "tmp"  # where the server makes its private metrics directory
        self.tmp.mkdir()
        env["TMPDIR"] = str(self.tmp)
        self.process = start_fhirimg(["serve", "--port", str(self.port), "--workers", "2"], workdir, env)
        try:
            wait_for_http(f"{self.root}/healthz", self.process, log=workdir / "fhirimg.log")
            self.directory = self.metrics_directory()
        except BaseException:
            self.stop()  # a server that did not start right is not left running
            raise

    def metrics_directory(self) -> str:
        found = glob.glob(str(self.tmp / "fhirimg-metrics-*"))
        if len(found) == 1:
            return found[0]
        pytest.fail("`fhirimg serve` did not set PROMETHEUS_MULTIPROC_DIR: multiprocess mode is not wired "
                    "in fhirimg/serve.py (see fhirimg.metrics.multiprocess.gunicorn_options)")

    def workers(self, count: int = 2) -> set[int]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            pids = {p.pid for p in descendants(self.process.pid)}
            if len(pids) == count:
                return pids
            time.sleep(0.1)
        raise AssertionError(f"expected {count} workers, found {pids}")

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(f"{self.root}{path}", timeout=10, headers={"Connection": "close"}, **kwargs)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def served(tmp_path):
    server = Served(tmp_path)
    yield server
    server.stop()


def counted_by_each_process(directory: str) -> dict[str, float]:
    """GET /fhir/metadata 200 as each process's own file has it (pid -> count)."""
    out = {}
    for path in glob.glob(os.path.join(directory, "counter_*.db")):
        pid = os.path.basename(path)[len("counter_"):-len(".db")]
        for key, number, _, _ in MmapedDict.read_all_values_from_file(path):
            if '"route": "/fhir/metadata"' in key and '"status": "200"' in key:
                out[pid] = out.get(pid, 0) + number
    return out


def test_one_scrape_counts_the_requests_of_both_workers(served):
    sent = 0
    with ThreadPoolExecutor(8) as pool:
        for _ in range(10):  # until both workers have served some (the kernel spreads the accepts)
            statuses = list(pool.map(lambda _: served.get("/fhir/metadata").status_code, range(40)))
            assert statuses == [200] * 40
            sent += 40
            if len(counted_by_each_process(served.directory)) >= 2:
                break
    per_process = counted_by_each_process(served.directory)
    assert len(per_process) == 2 and all(per_process.values()), per_process
    scrape = served.get("/metrics")
    assert scrape.status_code == 200
    assert value(scrape.text, "fhirimg_http_requests_total", **METADATA) == sent


def test_counts_outlive_replaced_workers_and_their_gauges_go(tmp_path):
    # Each worker is replaced after 10 requests: 45 requests are served by at least 5 processes.
    server = Served(tmp_path, serve__max_requests="10", serve__max_requests_jitter="0")
    try:
        for _ in range(45):
            assert server.get("/fhir/metadata").status_code == 200
        time.sleep(1.0)  # the last replacement
        living = server.workers()
        body = server.get("/metrics").text
        assert value(body, "fhirimg_http_requests_total", **METADATA) == 45
        pids = {sample_pid for sample_pid in pid_labels(body, "fhirimg_db_pool_size")}
        assert pids <= {str(pid) for pid in living}  # exited workers' gauges are dropped
        files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(server.directory, "*.db")))
        assert "counter_archive.db" in files and len(files) <= 2 * 3 + 2, files
    finally:
        server.stop()
    assert not os.path.exists(server.directory)  # removed when the server stops


def pid_labels(body: str, name: str) -> list[str]:
    from prometheus_client.parser import text_string_to_metric_families
    return [s.labels["pid"] for f in text_string_to_metric_families(body) for s in f.samples if s.name == name]


def test_the_metrics_listener_serves_without_a_token_and_only_probes(tmp_path):
    listen = free_port()
    server = Served(tmp_path, anonymous=False, metrics__listen=f"127.0.0.1:{listen}")
    try:
        inside = f"http://127.0.0.1:{listen}"
        assert requests.get(f"{inside}/metrics", timeout=10).status_code == 200
        assert requests.get(f"{inside}/readyz", timeout=10).status_code == 200
        assert requests.get(f"{inside}/fhir/metadata", timeout=10).status_code == 404
        assert server.get("/metrics").status_code == 401  # the API's port: the token or nothing
        assert server.get("/healthz").status_code == 200
    finally:
        server.stop()
