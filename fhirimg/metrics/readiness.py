"""/readyz: whether this process can serve — the database answers, its schema is the one
this fhirimg runs on, Redis answers (when one is configured) and the blob store takes a
file and gives it back.

The checks run at once, each given ``[metrics] readiness_timeout`` seconds; one that has
not answered by then fails as "no answer" (its thread finishes on its own).
"""
from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from sqlalchemy import text
from sqlalchemy.engine import Engine

from ..transfer.blobstore import STAGING_DIR

PROBE_BYTES = b"fhirimg readiness probe\n"


def check_database(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1")).scalar()


def check_schema(engine: Engine) -> None:
    """At the head revision (fhirimg.migrations): a newer release may have upgraded the
    database under a running server, or an older schema been restored."""
    from ..migrations import current_state
    state = current_state(engine)
    if state.kind != "current":
        raise RuntimeError(state.describe())


def check_redis(connect: Callable[[], object]) -> None:
    connect().ping()


def check_blob_store(root: str) -> None:
    """Write, read back and remove a small file where transfers stage theirs."""
    staging = Path(root) / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="readyz-", suffix=".tmp", dir=staging)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(PROBE_BYTES)
        if Path(name).read_bytes() != PROBE_BYTES:
            raise OSError(f"{staging}: a file read back differs from what was written")
    finally:
        Path(name).unlink(missing_ok=True)


@dataclass
class Readiness:
    """The checks of one app and the threads they run on (started at the first /readyz)."""

    checks: dict[str, Callable[[], None]]
    timeout: float
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not checked
    executor: ThreadPoolExecutor | None = None

    def report(self) -> tuple[bool, dict]:
        """(ready, the JSON document /readyz answers with)."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=len(self.checks), thread_name_prefix="fhirimg-readyz")
        started = time.monotonic()
        futures = {name: self.executor.submit(timed, check) for name, check in self.checks.items()}
        results, failed = {}, []
        for name, future in futures.items():
            left = max(0.0, self.timeout - (time.monotonic() - started))
            try:
                results[name] = {"status": "pass", "seconds": round(future.result(timeout=left), 4)}
            except FutureTimeout:
                results[name] = {"status": "fail", "error": f"no answer within {self.timeout:g} s"}
            except Exception as exc:  # noqa: BLE001 - any failure is the check's answer
                results[name] = {"status": "fail", "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
            if results[name]["status"] == "fail":
                failed.append(name)
        for name, why in self.skipped.items():
            results[name] = {"status": "skipped", "reason": why}
        ready = not failed
        return ready, {"status": "ready" if ready else "unavailable", "failed": failed, "checks": results}


def timed(check: Callable[[], None]) -> float:
    started = time.perf_counter()
    check()
    return time.perf_counter() - started
