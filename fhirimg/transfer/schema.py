"""Tables of the transfer subsystem: the index of DICOM instances held in the blob store.

The file system holds the bytes; this table says which files exist, what they are and
their SHA-256, and keeps each instance's DICOM JSON (without bulk data) so that QIDO-RS
and WADO-RS metadata are answered without opening files.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, LargeBinary, MetaData, String, Table

from fhirimg.store.schema import register_metadata

metadata = MetaData()

dicom_instance = Table(
    "dicom_instance", metadata,
    Column("sop_uid", String(64), primary_key=True),
    Column("study_uid", String(64), nullable=False),
    Column("series_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("transfer_syntax_uid", String(64), nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("path", String(256), nullable=False),  # relative to the blob root, built from UIDs only
    Column("stored_ms", BigInteger, nullable=False),
    Column("attributes", LargeBinary, nullable=False),  # DICOM JSON (PS3.18 F.2), bulk data left out
    Index("ix_dicom_instance_series", "study_uid", "series_uid"),
)

# One row per ImagingStudy with a retrieve Task that is not finished. The primary key makes
# "a second $retrieve while one is active returns the active Task" hold under concurrency,
# and the reconciler walks this table instead of searching every Task; the heartbeat is
# how it tells a running transfer from one whose worker died (Redis may know nothing).
active_retrieve = Table(
    "active_retrieve", metadata,
    Column("study_id", String(64), primary_key=True),
    Column("task_id", String(64), nullable=False, unique=True),
    Column("priority", String(16), nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("heartbeat_ms", BigInteger, nullable=True),  # last sign of life of the worker running it
    Column("enqueued_ms", BigInteger, nullable=True),  # when a job was last put on a queue for it
    Column("runs", Integer, nullable=False, default=0),  # how many times a worker started it
)

# How far the auto-retrieve rules have read the change sequence (store.schema resource_version.seq).
transfer_cursor = Table(
    "transfer_cursor", metadata,
    Column("name", String(40), primary_key=True),
    Column("seq", BigInteger, nullable=False),
)

register_metadata(metadata)


def create_transfer_schema(engine) -> None:
    """Create the transfer tables (idempotent); the store's create_schema does this too."""
    metadata.create_all(engine)
