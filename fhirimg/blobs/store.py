"""The blob store of this process, built from the configuration: staging and index here,
objects where ``[blobs] backend`` says."""
from __future__ import annotations

from fhirimg.transfer.blobstore import BlobStore
from fhirimg.transfer.settings import blob_root

from .settings import blobs_section

_S3_CLIENTS: dict = {}  # one client (connection pool, upload threads) per bucket setting, per process


def make_objects(config: dict):
    section = blobs_section(config)
    if section["backend"] != "s3":
        return None  # BlobStore's default: files under its root
    from .s3 import S3Objects
    settings = section["s3"]
    key = tuple(sorted((k, str(v)) for k, v in settings.items()))
    if key not in _S3_CLIENTS:
        _S3_CLIENTS[key] = S3Objects.from_settings(settings)
    return _S3_CLIENTS[key]


def make_blobstore(config: dict, engine) -> BlobStore:
    return BlobStore(blob_root(config), engine, objects=make_objects(config))
