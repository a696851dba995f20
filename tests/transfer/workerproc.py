"""A real ``fhirimg worker`` process on a private Redis, configured by a TOML file of the test's own."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

import fhirimg.transfer.settings  # noqa: F401 - registers the [transfer] section
from fhirimg.config import load_config

FHIRIMG = [sys.executable, "-m", "fhirimg.cli"]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, top: dict, sections: dict[str, dict]) -> Path:
    lines = [f"{key} = {toml_value(value)}" for key, value in top.items()]
    for name, section in sections.items():
        tables = {k: v for k, v in section.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        lines += ["", f"[{name}]"] + [f"{key} = {toml_value(value)}" for key, value in section.items()
                                      if key not in tables]
        for key, items in tables.items():
            for item in items:
                lines += ["", f"[[{name}.{key}]]"] + [f"{k} = {toml_value(v)}" for k, v in item.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def site_files(tmp: Path, redis_url: str, database_url: str | None = None, **transfer) -> tuple[Path, dict]:
    """A config file for worker and site: SQLite (or the given database), private Redis, fast retries, short lease."""
    section = {"allow_loopback": True, "backoff_base": 0.01, "backoff_max": 0.05, "retry_after_max": 0.5,
               "read_timeout": 10.0, "lease_seconds": 1.5, "reconcile_interval": 0.3, "staging_max_age": 2.0,
               **transfer}
    path = write_config(tmp / "fhirimg.toml", {
        "database_url": database_url or f"sqlite:///{tmp / 'site.db'}", "redis_url": redis_url, "var_dir": str(tmp / "var"),
        "base_url": "http://fhirimg.test/fhir", "log_level": "INFO"}, {"transfer": section})
    return path, load_config(path, env={})


class WorkerProcess:
    """``fhirimg worker`` in its own process group, so SIGKILL takes the work horse with it."""

    def __init__(self, config_path: Path, log_path: Path):
        self.log = open(log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(FHIRIMG + ["worker", "--config", str(config_path)],
                                        stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        cwd=config_path.parent, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL the worker, its work horse and its scheduler: nothing gets to clean up.

        RQ's work horse calls setsid(), so killing the process group would miss it.
        """
        family = psutil.Process(self.process.pid).children(recursive=True)
        for process in [*family, psutil.Process(self.process.pid)]:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=10)
        psutil.wait_procs(family, timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout}s")
