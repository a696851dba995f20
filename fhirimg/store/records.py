"""Plain records passed between storage and the layers above it."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass
class StoredVersion:
    """One version of one resource as stored.

    ``seq`` and ``last_updated_ms`` are assigned when the transaction commits; until then
    they are 0 (a version is only ever shown to a client after its commit).
    """

    res_type: str
    res_id: str
    version: int
    method: str
    is_deleted: bool = False
    resource: dict | None = None
    seq: int = 0
    last_updated_ms: int = 0
    changed: bool = True  # False when an update found identical content and wrote nothing
    created: bool = False  # True when this write created the resource
    pending_content: bytes | None = field(default=None, repr=False)

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def last_updated(self) -> datetime:
        return datetime.fromtimestamp(self.last_updated_ms / 1000, tz=timezone.utc)

    @property
    def location(self) -> str:
        return f"{self.res_type}/{self.res_id}/_history/{self.version}"


def format_instant(ms: int) -> str:
    """FHIR instant with millisecond precision in UTC, e.g. 2026-11-23T09:40:00.123Z."""
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
