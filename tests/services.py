"""Private services for tests: free ports, a private redis-server, and the skip-or-fail rule.

Outside CI a test whose service is missing skips with the reason; with
FHIRIMG_TEST_REQUIRE_SERVICES=1 (set by .ci/run) the same condition fails the run.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def services_required() -> bool:
    return os.environ.get("FHIRIMG_TEST_REQUIRE_SERVICES") == "1"


def require_or_skip(reason: str):
    if services_required():
        pytest.fail(f"required service missing (FHIRIMG_TEST_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class RedisServer:
    """A private redis-server on a free loopback port that keeps nothing on disk."""

    def __init__(self, workdir: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            require_or_skip("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--daemonize", "no", "--logfile", str(workdir / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- fhirimg itself as a real process (serve, run) --------------------------------------------

def fhirimg_command() -> list[str]:
    """The installed console script next to this interpreter, else `python -m fhirimg.cli`."""
    import sys
    script = Path(sys.executable).parent / "fhirimg"
    return [str(script)] if script.exists() else [sys.executable, "-m", "fhirimg.cli"]


def fhirimg_env(anonymous: bool = False, **settings: str) -> dict[str, str]:
    """The current environment without any FHIRIMG_* setting, plus `settings`
    (FHIRIMG_ + key in upper case: database_url="..." -> FHIRIMG_DATABASE_URL).
    `anonymous`: auth.mode = "none" (for process tests about something else)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
    if anonymous:
        env.update({"FHIRIMG_AUTH__MODE": "none", "FHIRIMG_AUTH__ALLOW_ANONYMOUS": "true"})
    env.update({f"FHIRIMG_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def start_fhirimg(args: list[str], workdir: Path, env: dict[str, str], **popen) -> subprocess.Popen:
    """`fhirimg ARGS` in `workdir`, output to workdir/fhirimg.log (read it on failure)."""
    log = open(workdir / "fhirimg.log", "ab")
    return subprocess.Popen(fhirimg_command() + args, cwd=workdir, env=env, stdout=log,
                            stderr=subprocess.STDOUT, **popen)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60.0, log: Path | None = None):
    """Poll `url` until it answers 200; fail early (with the log) if `process` exits."""
    import requests
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise AssertionError(f"process exited with {process.returncode} before {url} answered:\n{text}")
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return response
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer 200 within {timeout}s")


def descendants(pid: int) -> list:
    """psutil.Process objects of every process below `pid` (children, grandchildren)."""
    import psutil
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def wait_gone(processes: list, timeout: float) -> list:
    """The processes still alive after `timeout` seconds (zombies count as gone)."""
    import psutil
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    return [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def database_url_of(database: tuple[str, str | None]) -> str:
    """The `database` fixture's (url, schema) as one URL a separate engine or process can use
    (PostgreSQL: the private schema as its search_path)."""
    from urllib.parse import quote
    url, schema = database
    if not url.startswith("postgresql") or not schema:
        return url
    return f"{url}{'&' if '?' in url else '?'}options={quote('-csearch_path=' + schema)}"
