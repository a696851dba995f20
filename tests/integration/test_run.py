"""`fhirimg run`: private Redis + RQ worker + server from one command, and nothing left
behind when it stops (Ctrl-C, SIGTERM, even SIGKILL of the supervisor)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests
from redis import Redis
from rq import Worker

from ..factories import make_patient
from ..services import fhirimg_command, descendants, fhirimg_env, free_port, start_fhirimg, wait_for_http, wait_gone

pytestmark = pytest.mark.slow


class Running:
    """`fhirimg run` in its own session, as a terminal would start it."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.var = workdir / "var"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.env = env = fhirimg_env(var_dir=self.var, database_url=f"sqlite:///{self.var / 'fhirimg.db'}",
                          serve__port=self.port, serve__workers=1, log_level="INFO",
                          subscriptions__websocket_port=free_port())
        self.process = start_fhirimg(["run"], workdir, env, start_new_session=True)
        wait_for_http(f"{self.base}/metadata", self.process, timeout=90, log=workdir / "fhirimg.log")
        self.children = descendants(self.process.pid)

    def token(self) -> str:
        """`fhirimg token`, as the printed hint says, for the development client."""
        result = subprocess.run(fhirimg_command() + ["token"], cwd=self.workdir, env=self.env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    @property
    def socket(self) -> Path:
        return self.var / "redis.sock"

    def redis(self) -> Redis:
        return Redis(unix_socket_path=str(self.socket))

    def registered_workers(self, timeout: float = 30.0, count: int = 1) -> list[Worker]:
        deadline = time.monotonic() + timeout
        workers: list[Worker] = []
        while time.monotonic() < deadline:
            workers = Worker.all(connection=self.redis())
            if len(workers) >= count:
                return workers
            time.sleep(0.2)
        return workers

    def redis_servers(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            if str(self.socket) in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        return found

    def kill_everything(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for proc in self.children:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass


@pytest.fixture
def running(tmp_path):
    run = Running(tmp_path)
    yield run
    run.kill_everything()  # only if a test failed half-way


def assert_all_stopped(run: Running, within: float) -> None:
    assert wait_gone(run.children, within) == [], [p.cmdline() for p in run.children if p.is_running()]
    assert run.redis_servers() == []


def test_run_serves_the_api_with_embedded_redis_and_a_worker(running):
    assert running.socket.is_socket()
    assert running.redis().ping()
    workers = running.registered_workers(count=2)
    assert len(workers) == 2  # one for everything, one for notifications alone
    assert sorted(w.queue_names() for w in workers) == [["fhirimg-notify"], ["fhirimg-urgent", "fhirimg"]]
    names = {" ".join(p.cmdline()) for p in running.children}
    assert any("redis-server" in n for n in names) and any(" worker" in n for n in names)
    assert requests.get(f"{running.base}/Patient", timeout=10).status_code == 401  # smart mode
    token = running.token()
    created = requests.post(f"{running.base}/Patient", json=make_patient(), timeout=10,
                            headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token}"})
    assert created.status_code == 201
    assert (running.var / "fhirimg.db").exists()


def test_run_prints_how_to_get_a_token_once(running):
    log = (running.workdir / "fhirimg.log").read_text()
    assert log.count("token)") == 1 and "A development client was registered" in log
    assert running.token().count(".") == 2  # a JWT



def test_ctrl_c_stops_every_child_and_leaves_no_redis(running):
    assert running.registered_workers()
    os.killpg(running.process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert running.process.wait(30) == 0
    assert_all_stopped(running, within=5)
    assert not running.socket.exists()


def test_sigterm_to_the_supervisor_stops_every_child(running):
    assert running.registered_workers()
    running.process.send_signal(signal.SIGTERM)  # what systemd or docker stop do
    assert running.process.wait(30) == 0
    assert_all_stopped(running, within=5)


def test_killed_supervisor_leaves_no_orphans(running):
    running.process.kill()
    running.process.wait(5)
    assert_all_stopped(running, within=30)


def test_a_dying_child_stops_the_others_with_status_1(running):
    redis_server = next(p for p in running.children if "redis-server" in " ".join(p.cmdline()))
    redis_server.kill()
    assert running.process.wait(40) == 1
    assert_all_stopped(running, within=5)
    assert "redis exited" in (running.workdir / "fhirimg.log").read_text()
