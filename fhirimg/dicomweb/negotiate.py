"""Which representation a WADO-RS request asks for (PS3.18 8.7.3), decided per instance.

An Accept header lists media ranges in order of preference (q-values respected); each names
a media type and maybe a transfer syntax: ``*`` (as stored), a UID, or nothing (the media
type's default: Explicit VR Little Endian for application/dicom and octet-stream, JPEG
baseline for image/jpeg, ...). For each instance the first choice that can be met wins: the
stored syntax when acceptable, else a transcoding ``codecs.cannot_transcode`` allows. When
no choice can be met the answer is a 406 that names what can be served.
"""
from __future__ import annotations

from dataclasses import dataclass

from fhirimg.errors import FhirError, NotAcceptable

from . import codecs


@dataclass
class MediaRange:
    type: str
    params: dict[str, str]


@dataclass(frozen=True)
class Choice:
    media_type: str          # application/dicom, application/octet-stream, image/jpeg, ... or "*"
    syntax: str | None       # "*", a UID, or None (the media type's default)
    multipart: bool = True


def parse_accept(header: str) -> list[MediaRange]:
    """Media ranges of an Accept header (quoted parameter values may contain ';' or ','),
    most preferred first (stable for equal q)."""
    ranges = []
    for item in split_outside_quotes(header or "", ","):
        pieces = split_outside_quotes(item, ";")
        if not pieces or not pieces[0].strip():
            continue
        params = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        ranges.append(MediaRange(pieces[0].strip().lower(), params))
    return sorted(ranges, key=lambda m: -quality(m))


def quality(media: MediaRange) -> float:
    try:
        return float(media.params.get("q", "1"))
    except ValueError:
        return 1.0


def split_outside_quotes(text: str, separator: str) -> list[str]:
    out, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            out.append("".join(current))
            current = []
        else:
            current.append(char)
    out.append("".join(current))
    return out


def instance_choices(header: str) -> list[Choice]:
    """What a retrieve of instances (application/dicom parts) accepts, in preference order."""
    choices = []
    for media in parse_accept(header) or [MediaRange("*/*", {})]:
        if media.type in ("*/*", "multipart/*"):
            choices.append(Choice("application/dicom", None))
        elif media.type == "multipart/related" and media.params.get("type", "application/dicom") in (
                "application/dicom", "*/*", "application/*"):
            # type="*/*" is what dicomweb-client sends by default (PS3.18 8.7: the default
            # media type of the resource then applies).
            choices.append(Choice("application/dicom", media.params.get("transfer-syntax") or None))
        elif media.type == "multipart/related" and "type" not in media.params:
            choices.append(Choice("application/dicom", media.params.get("transfer-syntax") or None))
    if not choices:
        raise NotAcceptable(f"cannot answer {header!r}: instances are served as multipart/related; "
                            'type="application/dicom" (transfer-syntax=* as stored, or one of '
                            f"{', '.join(codecs.TARGETS)})")
    return choices


def frame_choices(header: str) -> list[Choice]:
    """What a retrieve of frames or bulk data accepts: multipart parts of a media type of
    PS3.18 Table 8.7.3-5, or (one frame) that media type as the whole answer."""
    choices = []
    for media in parse_accept(header) or [MediaRange("*/*", {})]:
        syntax = media.params.get("transfer-syntax") or None
        if media.type in ("*/*", "multipart/*"):
            # What HTTP libraries send by default (requests: */*): the resource's default
            # representation, uncompressed frames, which any client can use.
            choices.append(Choice("application/octet-stream", None))
        elif media.type == "multipart/related":
            part = media.params.get("type", "application/octet-stream")
            if part in ("*/*", "image/*", "application/*"):
                choices.append(Choice("*", "*"))
            elif part in codecs.FRAME_MEDIA:
                choices.append(Choice(part, syntax))
        elif media.type in codecs.FRAME_MEDIA:
            choices.append(Choice(media.type, syntax, multipart=False))
    if not choices:
        raise NotAcceptable(f"cannot answer {header!r}: frames are served as multipart/related parts "
                            f"of {', '.join(codecs.FRAME_MEDIA)}")
    return choices


def pick(choices: list[Choice], stored: str, attributes: dict, what: str, size: int = 0) -> tuple[Choice, str]:
    """The first choice this instance can be served in, and the syntax to serve ('*' never
    comes back: it becomes the stored syntax). `size`: a whole object's, when it would be
    transcoded whole. Raises 406 naming what could be served."""
    reasons = []
    for choice in choices:
        target = target_of(choice, stored)
        if target is None:
            reasons.append(f"{choice.syntax} is not a transfer syntax of {choice.media_type}")
            continue
        reason = codecs.cannot_transcode(attributes, stored, target, size)
        if reason is None:
            return choice, target
        reasons.append(reason)
    raise NotAcceptable(f"{what} is stored as {stored} and cannot be served as asked ({'; '.join(reasons)}); "
                        "ask with transfer-syntax=* for the stored encoding")


def target_of(choice: Choice, stored: str) -> str | None:
    if choice.syntax == "*" or choice.media_type == "*":
        return stored
    if choice.media_type == "application/dicom":
        return choice.syntax or codecs.EXPLICIT_LE
    allowed = codecs.FRAME_MEDIA[choice.media_type]
    if choice.syntax is None:
        # The stored syntax when it is one of the media type's, else the type's default: a
        # JPEG lossless frame asked for as image/jpeg is not re-encoded lossy.
        return stored if stored in allowed else allowed[0]
    return choice.syntax if choice.syntax in allowed else None


def require_frame_numbers(numbers: list[int], frames: int, sop_uid: str) -> None:
    missing = [n for n in numbers if n > frames]
    if missing:
        raise FhirError(404, "not-found", f"instance {sop_uid} has {frames} frame(s); no frame {missing[0]}")
