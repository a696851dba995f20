"""STOW-RS (PS3.18 10.5): the request body read part by part into staging files, and the
Store Instances Response Module (PS3.18 Annex I) built from what the ingest did.

Plain functions over byte chunks and results, so the Flask view stays a few lines and the
benchmark and tests can drive the same code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..transfer.blobstore import InstanceRecord, StagedFile
from ..transfer.multipart import MultipartReader, boundary_from_content_type, parse_media_type
from .ingest import CANNOT_UNDERSTAND, PROCESSING_FAILURE, Ingest, InstanceResult, Refused

DICOM = "application/dicom"
SERVER_SIDE = {PROCESSING_FAILURE}


class BadStow(ValueError):
    """The request cannot be read as a STOW-RS request: nothing is stored (400 or 415)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Received:
    """What the body held: instances that passed the checks, and parts refused on the way."""

    accepted: list[tuple[StagedFile, InstanceRecord]] = field(default_factory=list)
    refused: list[tuple[int, Refused]] = field(default_factory=list)  # (part number, why)
    parts: int = 0

    def discard(self) -> None:
        for staged, _ in self.accepted:
            staged.discard()


def require_dicom_multipart(content_type: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` body; else BadStow."""
    media = parse_media_type(content_type or "")
    if media.mime != "multipart/related":
        raise BadStow(415, f"Content-Type {media.mime or '(none)'!r} is not supported: STOW-RS takes "
                           f"multipart/related; type=\"{DICOM}\"")
    kind = media.params.get("type", DICOM).lower()
    if kind != DICOM:
        raise BadStow(415, f"multipart/related; type={kind!r} is not supported: send each instance as an "
                           f"{DICOM} part (PS3.10 file)")
    try:
        return boundary_from_content_type(content_type)
    except ValueError as exc:
        raise BadStow(400, str(exc)) from None


def receive(ingest: Ingest, content_type: str, chunks: Iterable[bytes], study_uid: str | None) -> Received:
    """Stream every part into a staging file and check it as soon as it is complete.

    A body that is not well-formed multipart (no closing delimiter, a part cut short) is
    refused whole: ``BadStow`` after every staging file it made was removed."""
    boundary = require_dicom_multipart(content_type)
    received = Received()
    reader = MultipartReader(boundary, lambda headers: ingest.open_staging(), ingest.settings.max_instance_bytes)
    try:
        for part in reader.read(chunks):
            received.parts += 1
            take_part(ingest, part, received, study_uid)
        if not reader.is_closed:
            raise BadStow(400, "the multipart body ends without its closing delimiter (truncated request)")
    except BadStow:
        abandon(reader, received)
        raise
    except ValueError as exc:  # MultipartError and PartTooLarge
        abandon(reader, received)
        status = 413 if "larger than the limit" in str(exc) else 400
        raise BadStow(status, f"part {received.parts + 1}: {exc}") from None
    except BaseException:
        abandon(reader, received)
        raise
    if received.parts == 0:
        raise BadStow(400, "the multipart body holds no parts")
    return received


def take_part(ingest: Ingest, part, received: Received, study_uid: str | None) -> None:
    staged: StagedFile = part.sink
    declared = parse_media_type(part.headers.get("content-type", DICOM)).mime
    try:
        if not part.is_complete:
            raise Refused(CANNOT_UNDERSTAND, "the part is incomplete")
        if declared != DICOM:
            raise Refused(CANNOT_UNDERSTAND, f"the part is {declared!r}, not {DICOM}")
        received.accepted.append((staged, ingest.check(staged, study_uid)))
        ingest.blobstore.start_sync(staged)  # durable while the next part arrives
    except Refused as exc:
        staged.discard()
        received.refused.append((received.parts, exc))


def abandon(reader, received: Received) -> None:
    if reader.current is not None:
        reader.current.sink.discard()
    received.discard()


# -- the answer ----------------------------------------------------------------------------------
def response_status(results: list[InstanceResult], refused: list) -> int:
    """200 all stored; 202 some failed (or warnings); 409 none stored for a reason of the
    request; 503 none stored because this server could not store them."""
    ok = [r for r in results if r.ok]
    failed_codes = [r.code for r in results if not r.ok] + [exc.code for _, exc in refused]
    if not failed_codes and not any(r.warning for r in ok):
        return 200
    if ok:
        return 202
    return 503 if failed_codes and all(c in SERVER_SIDE for c in failed_codes) else 409


def store_response(results: list[InstanceResult], refused: list, base: str, study_uid: str | None) -> dict:
    """The Store Instances Response Module as DICOM JSON."""
    body: dict = {}
    studies = {r.study_uid for r in results}
    only = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{only}"]} if only else {"vr": "UR"}
    failed = [failed_item(r.sop_class_uid, r.sop_uid, r.code) for r in results if not r.ok]
    failed += [failed_item(exc.sop_class_uid, exc.sop_uid, exc.code) for _, exc in refused]
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    referenced = [referenced_item(r, base) for r in results if r.ok]
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    return body


def failed_item(sop_class_uid: str, sop_uid: str, code: int) -> dict:
    item = {"00081197": {"vr": "US", "Value": [code]}}
    if sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [sop_class_uid]}
    if sop_uid:
        item["00081155"] = {"vr": "UI", "Value": [sop_uid]}
    return item


def referenced_item(result: InstanceResult, base: str) -> dict:
    item = {"00081150": {"vr": "UI", "Value": [result.sop_class_uid]},
            "00081155": {"vr": "UI", "Value": [result.sop_uid]},
            "00081190": {"vr": "UR", "Value": [f"{base}/studies/{result.study_uid}/series/{result.series_uid}"
                                               f"/instances/{result.sop_uid}"]}}
    if result.warning:
        item["00081196"] = {"vr": "US", "Value": [result.warning]}
    return item


def failure_summary(results: list[InstanceResult], refused: list) -> str:
    """One line for the audit trail and the log: how many failed, and the first reasons."""
    reasons = [f"{r.sop_uid or '?'}: {r.code:04X} {r.reason}" for r in results if not r.ok]
    reasons += [f"part {n}: {exc.code:04X} {exc.reason}" for n, exc in refused]
    text = f"{len(reasons)} instance(s) refused"
    return text + ("; " + "; ".join(reasons[:3]) if reasons else "") + ("; ..." if len(reasons) > 3 else "")

