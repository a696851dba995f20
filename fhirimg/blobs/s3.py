"""DICOM objects in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW), through
obstore (the Rust object_store crate behind a small Python API: streaming multipart puts,
conditional create, ranged reads, one client for S3/GCS/Azure should those follow).

A put is a conditional create (``If-None-Match: *``): it never replaces an object. When
the key already exists, the object's recorded SHA-256 (user metadata ``sha256``) decides:
the same bytes are a success (a racing duplicate upload, or a retry after a crash between
the put and the index row); other bytes are replaced only when the caller allows it (no
index row names them, or the push duplicate policy is overwrite), else ObjectConflict.
Reads go through obstore's buffered reader, which fetches ranges as the reader seeks and
reads, so a frame of a large multi-frame object costs a range request, not the object.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterator

import obstore
from obstore.exceptions import AlreadyExistsError, NotFoundError, PreconditionError
from obstore.store import S3Store

from .objects import ObjectConflict, Placement

UPLOAD_THREADS = 8
READ_BUFFER = 1 << 20


class S3Objects:
    kind = "s3"

    def __init__(self, store: S3Store, bucket: str, prefix: str = "", endpoint: str = ""):
        self.store, self.bucket, self.endpoint = store, bucket, endpoint
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.pool = ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="s3-put")

    @classmethod
    def from_settings(cls, settings: dict) -> "S3Objects":
        config = {"region": settings["region"], "aws_virtual_hosted_style_request": settings["virtual_hosted"]}
        if settings["access_key"]:
            config.update({"access_key_id": settings["access_key"], "secret_access_key": settings["secret_key"]})
        if settings["endpoint"]:
            config["endpoint"] = settings["endpoint"]
        client = {"allow_http": settings["endpoint"].startswith("http://"), "timeout": f"{int(settings['timeout'])}s",
                  "connect_timeout": "10s"}
        store = S3Store(settings["bucket"], config=config, client_options=client,
                        retry_config={"max_retries": settings["max_retries"], "retry_timeout": "120s",
                                      "backoff": {"init_backoff": "100ms", "max_backoff": "15s", "base": 2}})
        return cls(store, settings["bucket"], settings["prefix"], settings["endpoint"])

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
            self.put(item, "create")
        except (AlreadyExistsError, PreconditionError):
            try:
                held = self.sha256_of(item.key)
                if held == item.sha256:
                    return item.key  # the same bytes are there already
                if not item.replace:
                    return ObjectConflict(f"{item.key} already holds other bytes (sha256 {held or 'unknown'})")
                self.put(item, "overwrite")
            except Exception as exc:  # noqa: BLE001 - reported with the others
                return exc
        except Exception as exc:  # noqa: BLE001
            return exc
        return item.key

    def put(self, item: Placement, mode: str) -> None:
        with open(item.path, "rb") as fh:
            obstore.put(self.store, self.name(item.key), fh, mode=mode,
                        attributes={"Content-Type": "application/dicom", "sha256": item.sha256})

    def sha256_of(self, key: str) -> str | None:
        try:
            result = obstore.get(self.store, self.name(key), options={"head": True})
        except NotFoundError:
            return None
        return dict(result.attributes).get("sha256")

    def delete(self, key: str) -> None:
        try:
            obstore.delete(self.store, self.name(key))
        except NotFoundError:
            pass

    # -- reads --------------------------------------------------------------------------------
    def open(self, key: str) -> BinaryIO:
        return obstore.open_reader(self.store, self.name(key), buffer_size=READ_BUFFER)

    def size(self, key: str) -> int | None:
        try:
            return obstore.head(self.store, self.name(key))["size"]
        except NotFoundError:
            return None

    def keys(self) -> Iterator[tuple[str, int]]:
        for batch in obstore.list(self.store, prefix=self.prefix or None):
            for meta in batch:
                path = meta["path"]
                if path.endswith(".dcm"):
                    yield path[len(self.prefix):], meta["size"]

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" + (f" at {self.endpoint}" if self.endpoint else "")
