"""prometheus_client's multiprocess mode under gunicorn: every worker writes its metrics
to files in one private directory, and whichever worker answers /metrics adds them up.

``gunicorn_options`` is called by ``fhirimg serve`` in the gunicorn master *before* the
app is first built: prometheus_client chooses between in-process values and files when it
is first imported, from PROMETHEUS_MULTIPROC_DIR, and the workers inherit that choice when
they fork. This module therefore imports prometheus_client only inside functions.

The directory is made for each serve run (mkdtemp: empty, mode 0700) and removed when the
master exits; those of masters that died without exiting are removed at the next start. When a worker exits (recycled after max_requests, killed by a timeout), its
gauges are dropped and its counters and histograms are merged into one ``*_archive.db``
per kind, so counts never go backwards and a scrape reads a few files however many
workers have come and gone. ``collect.lock`` keeps a scrape from reading in the middle
of a merge.
"""
from __future__ import annotations

import fcntl
import glob
import logging
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("fhirimg.metrics")

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "fhirimg-metrics-"
MASTER_FILE = "master.pid"
LOCK_FILE = "collect.lock"
ARCHIVE = "archive"
ARCHIVED_KINDS = ("counter", "histogram")  # gauges of a dead process are dropped, not kept
LOCK_WAIT = 2.0  # the master waits this long for a scrape to finish reading, then merges later


# -- the gunicorn master ---------------------------------------------------------------------------

def gunicorn_options(config: dict, serve: dict, options: dict) -> dict:
    """`options` with the metrics listener bound (``[metrics] listen``) and the hooks of
    multiprocess mode; sets PROMETHEUS_MULTIPROC_DIR for this process and its workers."""
    from .settings import metrics_settings
    listen = metrics_settings(config).listen
    if listen is not None and listen[1] == int(serve["port"]):
        import click
        raise click.ClickException(f"[metrics] listen uses port {listen[1]}, the API's own (serve.port): "
                                   "choose another port")
    directory = make_directory()
    out = dict(options)
    if listen is not None:
        host = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
        out["bind"] = [*as_list(options.get("bind")), f"{host}:{listen[1]}"]
    out["when_ready"] = chained(options.get("when_ready"), lambda server: forget_process(directory, os.getpid()))
    out["child_exit"] = chained(options.get("child_exit"),
                                lambda server, worker: worker_exited(directory, worker.pid, set(server.WORKERS)))
    out["on_exit"] = chained(options.get("on_exit"), lambda server: shutil.rmtree(directory, ignore_errors=True))
    return out


def make_directory() -> str:
    """A new private directory, named in the environment before prometheus_client is imported."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None and not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError("prometheus_client was imported before multiprocess mode was set up: call "
                           "fhirimg.metrics.multiprocess.gunicorn_options before create_app")
    remove_stale_directories(tempfile.gettempdir())
    directory = tempfile.mkdtemp(prefix=PREFIX)
    Path(directory, MASTER_FILE).write_text(str(os.getpid()))
    os.environ[ENV] = directory
    return directory


def remove_stale_directories(parent: str, now: float | None = None) -> list[str]:
    """The directories of servers whose master is gone (killed with SIGKILL, a crash: no
    on_exit ran) are removed; one without its master's pid yet is left an hour to a starting
    server. Only this user's can be removed (mkdtemp makes them 0700 in a sticky /tmp)."""
    now = time.time() if now is None else now
    removed = []
    for directory in glob.glob(os.path.join(parent, PREFIX + "*")):
        try:
            pid = int(Path(directory, MASTER_FILE).read_text())
            stale = not is_running(pid)
        except FileNotFoundError:
            stale = now - os.path.getmtime(directory) > 3600
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory)
    return removed


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def as_list(bind) -> list[str]:
    if not bind:
        return []
    return [bind] if isinstance(bind, str) else list(bind)


def chained(first: Callable | None, then: Callable) -> Callable:
    if first is None:
        return then

    def both(*args):
        first(*args)
        then(*args)
    return both


def forget_process(directory: str, pid: int) -> None:
    """Drop the files a process wrote (the master's, from building the app once before forking)."""
    for path in glob.glob(os.path.join(directory, f"*_{pid}.db")):
        os.remove(path)


def worker_exited(directory: str, pid: int, living: set[int]) -> None:
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(pid, directory)
    try:
        archive_dead_files(directory, living | {os.getpid()})
    except Exception:  # noqa: BLE001 - never let bookkeeping stop the master
        log.exception("metrics: could not merge the files of worker %s", pid)


# -- merging the files of processes that are gone ------------------------------------------------------

def pid_of(path: str) -> str:
    return os.path.basename(path)[:-len(".db")].rpartition("_")[2]


def archive_dead_files(directory: str, living: set[int], wait: float = LOCK_WAIT) -> int:
    """Merge the counter and histogram files of processes not in `living` into the archive
    files; returns how many files were merged (0 if a scrape held the lock too long)."""
    living_names = {str(pid) for pid in living} | {ARCHIVE}
    merged = 0
    with collect_lock(directory, fcntl.LOCK_EX, wait) as locked:
        if not locked:
            return 0
        for kind in ARCHIVED_KINDS:
            dead = [p for p in glob.glob(os.path.join(directory, f"{kind}_*.db")) if pid_of(p) not in living_names]
            if dead:
                merge_into_archive(directory, kind, dead)
                merged += len(dead)
    return merged


def merge_into_archive(directory: str, kind: str, dead: list[str]) -> None:
    from prometheus_client.mmap_dict import MmapedDict, mmap_key
    from prometheus_client.multiprocess import MultiProcessCollector
    archive = os.path.join(directory, f"{kind}_{ARCHIVE}.db")
    sources = ([archive] if os.path.exists(archive) else []) + dead
    metrics = MultiProcessCollector.merge(sources, accumulate=False)  # per-bucket values, as stored
    temporary = archive + ".tmp"  # not *.db: a scrape's glob does not see it
    Path(temporary).unlink(missing_ok=True)
    target = MmapedDict(temporary)
    try:
        for metric in metrics:
            for sample in metric.samples:
                key = mmap_key(metric.name, sample.name, list(sample.labels), list(sample.labels.values()),
                               metric.documentation)
                target.write_value(key, sample.value, 0.0)
    finally:
        target.close()
    os.replace(temporary, archive)
    for path in dead:
        os.remove(path)


@contextmanager
def collect_lock(directory: str, mode: int, wait: float | None = None) -> Iterator[bool]:
    """flock on collect.lock: shared for a scrape, exclusive for a merge. With `wait`,
    give up after that many seconds (yields False) instead of blocking."""
    with open(os.path.join(directory, LOCK_FILE), "a") as fh:
        deadline = time.monotonic() + (wait or 0.0)
        while True:
            try:
                fcntl.flock(fh, mode | (fcntl.LOCK_NB if wait is not None else 0))
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(0.01)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- a worker answering /metrics ---------------------------------------------------------------------------

class ProcessFiles:
    """A collector adding up every process's files (prometheus_client's MultiProcessCollector,
    read under the shared lock)."""

    def __init__(self, directory: str):
        self.directory = directory

    def collect(self):
        from prometheus_client.multiprocess import MultiProcessCollector
        with collect_lock(self.directory, fcntl.LOCK_SH):
            files = glob.glob(os.path.join(self.directory, "*.db"))
            return list(MultiProcessCollector.merge(files, accumulate=True))


def multiprocess_directory() -> str | None:
    """The directory of this server's processes, if multiprocess mode is on in this process."""
    directory = os.environ.get(ENV)
    if not directory or not os.path.isdir(directory):
        return None
    from prometheus_client import values
    if not getattr(values.ValueClass, "_multiprocess", False):
        log.error("metrics: %s is set but prometheus_client was imported before it; /metrics shows only "
                  "this process", ENV)
        return None
    return directory
