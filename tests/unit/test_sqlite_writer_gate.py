"""SQLite writers of one process queue on a lock (WriterGate) rather than in SQLite's
sleeping busy handler: the next writer enters as soon as the previous one commits, and a
rolled-back transaction releases the gate."""
from __future__ import annotations

import threading
import time

import pytest

from fhirimg.store import Repository, create_schema, make_engine

from ..factories import make_patient


@pytest.fixture
def repo(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'gate.db'}")
    create_schema(engine)
    yield Repository(engine)
    engine.dispose()


def test_a_waiting_writer_enters_as_soon_as_the_holder_commits(repo):
    holding, release, done = threading.Event(), threading.Event(), {}

    def slow():
        with repo.transaction() as uow:
            uow.create("Patient", make_patient(family="Slow"), "slow")
            holding.set()
            release.wait(10)
        done["slow"] = time.monotonic()

    def fast():
        repo.create("Patient", make_patient(family="Fast"), "fast")
        done["fast"] = time.monotonic()

    slow_thread = threading.Thread(target=slow)
    slow_thread.start()
    assert holding.wait(10)
    fast_thread = threading.Thread(target=fast)
    fast_thread.start()
    fast_thread.join(0.5)
    assert fast_thread.is_alive(), "the second writer did not wait for the first"
    release.set()
    slow_thread.join(10), fast_thread.join(10)
    # SQLite's own busy handler would have it sleeping in steps of up to 100 ms by now.
    assert done["fast"] - done["slow"] < 0.02  # measured: ~5 ms with the gate, ~30 ms without
    assert repo.read("Patient", "fast") is not None


def test_a_rolled_back_write_releases_the_gate(repo):
    with pytest.raises(RuntimeError):
        with repo.transaction() as uow:
            uow.create("Patient", make_patient(family="Doomed"), "doomed")
            raise RuntimeError("abort")
    result = {}
    writer = threading.Thread(target=lambda: result.setdefault(
        "v", repo.create("Patient", make_patient(family="Next"), "next")))
    writer.start()
    writer.join(5)
    assert not writer.is_alive() and result["v"].version == 1
    assert repo.read("Patient", "doomed") is None


def test_many_threads_write_without_loss(repo):
    def write(n):
        for i in range(20):
            repo.create("Patient", make_patient(family=f"T{n}"), f"t{n}-{i}")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(repo.read("Patient", f"t{n}-{i}") for n in range(8) for i in range(20))
