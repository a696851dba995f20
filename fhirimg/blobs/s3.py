"""DICOM objects in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW), through
obstore (the Rust object_store crate behind a small Python API: streaming multipart puts,
conditional create, ranged reads, one client for S3/GCS/Azure should those follow).

A put is a conditional create (``If-None-Match: *``, one PUT with the body's SHA-256 as its
checksum, which the server verifies): it never replaces an object. When the key already
exists, the object's recorded SHA-256 (user metadata) decides: the same bytes are a success
(a racing duplicate upload, a retried PUT whose first attempt landed, a retry after a crash
between the put and the index row); other bytes are replaced only when the caller allows it
(no index row names them, or the push duplicate policy is overwrite), else ObjectConflict.

Measured on SeaweedFS 4.48 (tests/blobs/seaweed.py): the conditional single PUT is atomic
under racing writers (one winner, its bytes stored), but a conditional *multipart* complete
is not (several racers won), and obstore sends a conditional put as one fully materialised
request. So objects up to ``single_put_max`` go as one conditional PUT, with the bytes in
flight bounded by a semaphore; larger ones are checked with HEAD and then streamed as a
multipart upload: that check-then-put is not atomic, which is acceptable only because the
writers of one instance are already serialised (a study's pushes hold its lock; one active
retrieve Task per study). SeaweedFS does not fsync an acknowledged PUT by default (a
machine crash can lose it; ``weed shell fs.configure -fsync=true`` turns it on).
Reads go through obstore's buffered reader, which fetches ranges as the reader seeks and
reads, so a frame of a large multi-frame object costs a range request, not the object.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterator

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
from obstore.store import S3Store

from .objects import ObjectConflict, Placement

UPLOAD_THREADS = 8
READ_BUFFER = 1 << 20
SHA_KEY = "fhirimg-sha256"
MISSING = (FileNotFoundError, NotFoundError)  # obstore 0.12 raises the built-in one


class ByteBudget:
    """At most ``limit`` bytes of single-PUT bodies in memory at once (a larger one waits for
    the others, then goes alone)."""

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0
        self.cond = threading.Condition()

    def __call__(self, size: int):
        budget = self

        class Held:
            def __enter__(self):
                with budget.cond:
                    budget.cond.wait_for(lambda: budget.used == 0 or budget.used + size <= budget.limit)
                    budget.used += size

            def __exit__(self, *exc):
                with budget.cond:
                    budget.used -= size
                    budget.cond.notify_all()
        return Held()


class S3Objects:
    kind = "s3"

    def __init__(self, store: S3Store, bucket: str, prefix: str = "", endpoint: str = "",
                 single_put_max: int = 64 << 20, in_flight: int = 256 << 20):
        self.store, self.bucket, self.endpoint = store, bucket, endpoint
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.single_put_max = single_put_max
        self.in_flight = ByteBudget(in_flight)
        self.pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="s3-put")

    @classmethod
    def from_settings(cls, settings: dict) -> "S3Objects":
        from datetime import timedelta
        config = {"region": settings["region"], "virtual_hosted_style_request": settings["virtual_hosted"],
                  "checksum_algorithm": "SHA256"}  # the server verifies each PUT's body
        if settings["access_key"]:
            config.update({"access_key_id": settings["access_key"], "secret_access_key": settings["secret_key"]})
        if settings["endpoint"]:
            config["endpoint"] = settings["endpoint"]
        client = {"allow_http": settings["endpoint"].startswith("http://"),
                  "timeout": timedelta(seconds=settings["timeout"]), "connect_timeout": timedelta(seconds=10)}
        retry = {"max_retries": settings["max_retries"], "retry_timeout": timedelta(seconds=120),
                 "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=15),
                             "base": 2}}
        store = S3Store(settings["bucket"], config=config, client_options=client, retry_config=retry)
        return cls(store, settings["bucket"], settings["prefix"], settings["endpoint"], settings["single_put_max"])

    def name(self, key: str) -> str:
        return self.prefix + key

    # -- writes -------------------------------------------------------------------------------
    def put_many(self, placements: list[Placement]) -> list[str]:
        results = list(self.pool.map(self.put_one, placements)) if len(placements) > 1 else \
            [self.put_one(p) for p in placements]
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        return results

    def put_one(self, item: Placement):
        try:
            if item.size <= self.single_put_max:
                with self.in_flight(item.size):
                    self.put(item, "create")
            else:
                self.put_large(item)
        except (AlreadyExistsError, PreconditionError, ObjectConflict):
            try:
                held = self.sha256_of(item.key)
                if held == item.sha256:
                    return item.key  # the same bytes are there already
                if not item.replace:
                    return ObjectConflict(f"{item.key} already holds other bytes (sha256 {held or 'unknown'})")
                self.put(item, "overwrite", multipart=item.size > self.single_put_max)
            except Exception as exc:  # noqa: BLE001 - reported with the others
                return exc
        except Exception as exc:  # noqa: BLE001
            return exc
        return item.key

    def put(self, item: Placement, mode: str, multipart: bool = False) -> None:
        attributes = {"Content-Type": "application/dicom", SHA_KEY: item.sha256}
        if multipart:  # streamed from the file in parts, bounded memory
            obstore.put(self.store, self.name(item.key), item.path, mode="overwrite", attributes=attributes,
                        use_multipart=True, max_concurrency=4)
            return
        with open(item.path, "rb") as fh:
            obstore.put(self.store, self.name(item.key), fh, mode=mode, attributes=attributes,
                        use_multipart=False)

    def put_large(self, item: Placement) -> None:
        if self.size(item.key) is not None:
            raise ObjectConflict(f"{item.key} exists")  # put_one compares the hashes
        self.put(item, "overwrite", multipart=True)

    def sha256_of(self, key: str) -> str | None:
        try:
            result = obstore.get(self.store, self.name(key), options={"head": True})
        except MISSING:
            return None
        return dict(result.attributes).get(SHA_KEY)

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self.store, self.name(key))
        except MISSING:
            pass

    # -- reads --------------------------------------------------------------------------------
    def open(self, key: str, size: int | None = None) -> BinaryIO:
        """obstore's buffered reader: ranges fetched as it is read and seeked (``size`` from
        the index saves a HEAD)."""
        return ObjectReader(obstore.open_reader(self.store, self.name(key), buffer_size=READ_BUFFER, size=size))

    def size(self, key: str) -> int | None:
        try:
            return obstore.head(self.store, self.name(key))["size"]
        except MISSING:
            return None

    def keys(self) -> Iterator[tuple[str, int]]:
        for batch in obstore.list(self.store, prefix=self.prefix or None):
            for meta in batch:
                path = meta["path"]
                if path.endswith(".dcm"):
                    yield path[len(self.prefix):], meta["size"]

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")


class ObjectReader:
    """obstore's reader as the file object its callers expect (``with``, read, seek, tell)."""

    def __init__(self, reader):
        self.reader = reader
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        return bytes(self.reader.read(None if size is None or size < 0 else size))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.reader.seek(offset, whence)

    def tell(self) -> int:
        return self.reader.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reader.close()

    def __enter__(self) -> "ObjectReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
