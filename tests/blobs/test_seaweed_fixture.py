"""The SeaweedFS fixture is a real S3 server with the semantics the blob store relies on."""
from __future__ import annotations

import hashlib
import os
import threading

import pytest
import requests

obstore = pytest.importorskip("obstore", reason="pip install obstore==0.12.1")
from obstore.exceptions import AlreadyExistsError


def test_put_get_round_trip(seaweed, bucket):
    store = seaweed.store(bucket)
    data = os.urandom(300_000)
    obstore.put(store, "1.2/1.2.3/1.2.3.4.dcm", data, mode="create")
    assert bytes(obstore.get(store, "1.2/1.2.3/1.2.3.4.dcm").bytes()) == data
    meta = obstore.head(store, "1.2/1.2.3/1.2.3.4.dcm")
    assert meta["size"] == len(data)
    streamed = b"".join(obstore.get(store, "1.2/1.2.3/1.2.3.4.dcm").stream(min_chunk_size=64 * 1024))
    assert hashlib.sha256(streamed).digest() == hashlib.sha256(data).digest()
    with pytest.raises(FileNotFoundError):
        obstore.get(store, "1.2/1.2.3/absent.dcm")


def test_requests_must_be_signed_with_the_key(seaweed, bucket):
    anonymous = requests.put(f"{seaweed.endpoint}/{bucket}/x", data=b"x", timeout=10)
    assert anonymous.status_code == 403


def test_conditional_create_refuses_a_second_put_of_the_same_key(seaweed, bucket):
    store = seaweed.store(bucket)
    obstore.put(store, "a/b/c.dcm", b"first", mode="create")
    with pytest.raises(AlreadyExistsError):
        obstore.put(store, "a/b/c.dcm", b"second", mode="create")
    raw = seaweed.request("PUT", f"/{bucket}/a/b/c.dcm", b"third", {"If-None-Match": "*"})
    assert raw.status_code == 412
    assert bytes(obstore.get(store, "a/b/c.dcm").bytes()) == b"first"


def test_racing_creates_of_one_key_leave_one_object(seaweed, bucket):
    """One winner, always; the losers can wait 1-4 s for SeaweedFS's per-object lock."""
    store = seaweed.store(bucket)
    racers = 4
    for round_ in range(2):
        key, barrier, won = f"race/{round_}.dcm", threading.Barrier(racers), []

        def put(i, key=key, barrier=barrier, won=won):
            barrier.wait()
            try:
                obstore.put(store, key, bytes([i]) * 100_000, mode="create")
                won.append(i)
            except AlreadyExistsError:
                pass

        threads = [threading.Thread(target=put, args=(i,)) for i in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(won) == 1
        assert bytes(obstore.get(store, key).bytes()) == bytes([won[0]]) * 100_000


def test_ranged_get_returns_the_right_bytes(seaweed, bucket):
    store = seaweed.store(bucket)
    data = os.urandom(1_000_000)
    obstore.put(store, "frames.dcm", data)
    assert bytes(obstore.get_range(store, "frames.dcm", start=1000, end=2000)) == data[1000:2000]
    assert bytes(obstore.get_range(store, "frames.dcm", start=999_000, length=5000)) == data[999_000:]
    parts = obstore.get_ranges(store, "frames.dcm", starts=[0, 500_000], lengths=[10, 100_000])
    assert [bytes(p) for p in parts] == [data[:10], data[500_000:600_000]]
    suffix = obstore.get(store, "frames.dcm", options={"range": {"suffix": 100}})
    assert bytes(suffix.bytes()) == data[-100:]
    raw = seaweed.request("GET", f"/{bucket}/frames.dcm", headers={"Range": "bytes=10-19"})
    assert raw.status_code == 206 and raw.content == data[10:20]


def test_kill_and_restart_keep_what_was_acknowledged(private_seaweed):
    server = private_seaweed
    store = server.store()
    written = {f"1.2/1.2.3/1.2.3.{i}.dcm": os.urandom(50_000) for i in range(20)}
    for key, data in written.items():
        obstore.put(store, key, data, mode="create")
    endpoint = server.endpoint

    server.kill()
    with pytest.raises(requests.ConnectionError):
        requests.get(endpoint, timeout=2)
    server.restart()

    assert server.endpoint == endpoint
    for key, data in written.items():
        assert bytes(obstore.get(store, key).bytes()) == data
    with pytest.raises(AlreadyExistsError):  # still there for conditional create too
        obstore.put(store, next(iter(written)), b"other", mode="create")
