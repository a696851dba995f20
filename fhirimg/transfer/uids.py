"""DICOM UID validation (PS3.5 §9.1): the only text from outside that may become a file path."""
from __future__ import annotations

import re

from fhirimg.errors import Invalid

# PS3.5 §9.1: components of digits separated by ".", each without a leading zero
# unless it is the single digit 0, at most 64 characters in all.
# fullmatch, never match with ^...$: "$" also matches before a trailing newline ("1.2.3\n").
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
MAX_UID_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """True for a UID PS3.5 §9.1 allows; anything else (``..``, ``/``, letters) is False."""
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and bool(_UID.fullmatch(value))


def require_uid(value: object, what: str = "UID") -> str:
    """Return the UID or raise 400 Invalid naming what was wrong."""
    if not is_valid_uid(value):
        shown = repr(value)[:80]
        raise Invalid(f"{what} {shown} is not a valid DICOM UID (PS3.5 9.1)")
    return value  # type: ignore[return-value]


def uid_from_identifier(value: str) -> str | None:
    """``urn:oid:1.2.3`` (ImagingStudy.identifier, system urn:dicom:uid) → ``1.2.3``."""
    if value.startswith("urn:oid:"):
        value = value[len("urn:oid:"):]
    return value if is_valid_uid(value) else None
