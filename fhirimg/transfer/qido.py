"""Step 1 — what exists: QIDO-RS searches for a study's series and their instances (PS3.18 §10.6).

Large archives cap answers, so every search pages with ``limit``/``offset`` until a page
comes back short. UIDs in answers are validated before anything else sees them: a
source naming an instance ``../../etc`` gets that entry rejected and recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .client import SourceError, TransferClient, build_url
from .uids import is_valid_uid

TAG_SOP_CLASS = "00080016"
TAG_SOP_INSTANCE = "00080018"
TAG_MODALITY = "00080060"
TAG_SERIES_DESCRIPTION = "0008103E"
TAG_BODY_PART = "00180015"
TAG_STUDY_UID = "0020000D"
TAG_SERIES_UID = "0020000E"
TAG_SERIES_NUMBER = "00200011"
TAG_INSTANCE_NUMBER = "00200013"
TAG_NUMBER_OF_FRAMES = "00280008"
MAX_PAGES = 10_000
# One QIDO search (the series of a study, the instances of a series) may bring at most this
# many results and bytes in all its pages: a source paging 600 KB pages without end grew a
# worker to 3 GB in 76 s.
MAX_RESULTS = 100_000
MAX_SEARCH_BYTES = 32 << 20


@dataclass
class SourceInstance:
    sop_uid: str
    sop_class_uid: str | None = None
    number: int | None = None


@dataclass
class SourceSeries:
    series_uid: str
    modality: str | None = None
    number: int | None = None
    description: str | None = None
    body_part: str | None = None
    base_url: str = ""
    instances: dict[str, SourceInstance] = field(default_factory=dict)


@dataclass
class Rejection:
    """An object of the source that was refused, with where and why (recorded in Task.output)."""

    reason: str
    detail: str
    series_uid: str | None = None
    sop_uid: str | None = None


@dataclass
class SourceStudy:
    study_uid: str
    series: list[SourceSeries] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def instance_count(self) -> int:
        return sum(len(s.instances) for s in self.series)


def first_value(dataset: dict, tag: str):
    """The first value of a DICOM JSON attribute (PS3.18 F.2.2), or None."""
    element = dataset.get(tag) if isinstance(dataset, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def int_value(dataset: dict, tag: str) -> int | None:
    value = first_value(dataset, tag)
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def str_value(dataset: dict, tag: str, max_length: int = 256) -> str | None:
    value = first_value(dataset, tag)
    return str(value)[:max_length] if isinstance(value, (str, int, float)) else None


def search_paged(client: TransferClient, base: str, segments: list[str], page_size: int,
                 includefields: tuple[str, ...] = ()) -> list[dict]:
    """All results of one QIDO search, following limit/offset paging."""
    results: list[dict] = []
    received = 0
    for _ in range(MAX_PAGES):
        query = [("limit", str(page_size)), ("offset", str(len(results)))]
        query += [("includefield", tag) for tag in includefields]
        try:
            page, size = client.get_json_sized(build_url(base, segments, query),
                                               max_bytes=MAX_SEARCH_BYTES - received)
        except SourceError as exc:
            if "larger than the limit" in str(exc):
                raise ValueError(f"QIDO search {'/'.join(segments)} answered more than {MAX_SEARCH_BYTES} "
                                 "bytes in all") from None
            raise
        received += size
        if not isinstance(page, list):
            raise ValueError(f"QIDO answer for {'/'.join(segments)} is not a JSON array")
        results.extend(item for item in page if isinstance(item, dict))
        if len(results) > MAX_RESULTS:
            raise ValueError(f"QIDO search {'/'.join(segments)} answered more than {MAX_RESULTS} results")
        if len(page) < page_size:
            return results
    raise ValueError(f"QIDO search {'/'.join(segments)} did not end after {MAX_PAGES} pages")


def search_for_series(client: TransferClient, base: str, study_uid: str, page_size: int,
                      study: SourceStudy) -> list[SourceSeries]:
    """QIDO ``/studies/{s}/series``: the series of the study with valid UIDs."""
    found: dict[str, SourceSeries] = {}
    for item in search_paged(client, base, ["studies", study_uid, "series"], page_size,
                             (TAG_SERIES_DESCRIPTION, TAG_BODY_PART)):
        series_uid = first_value(item, TAG_SERIES_UID)
        if not is_valid_uid(series_uid):
            study.rejections.append(Rejection("invalid-uid", f"series UID {str(series_uid)[:70]!r}"))
            continue
        found[series_uid] = SourceSeries(
            series_uid, modality=str_value(item, TAG_MODALITY, 16), number=int_value(item, TAG_SERIES_NUMBER),
            description=str_value(item, TAG_SERIES_DESCRIPTION, 64), body_part=str_value(item, TAG_BODY_PART, 16),
            base_url=base)
    return list(found.values())


def search_for_instances(client: TransferClient, study_uid: str, series: SourceSeries, page_size: int,
                         study: SourceStudy) -> None:
    """QIDO ``/studies/{s}/series/{se}/instances`` into ``series.instances``."""
    segments = ["studies", study_uid, "series", series.series_uid, "instances"]
    for item in search_paged(client, series.base_url, segments, page_size):
        sop_uid = first_value(item, TAG_SOP_INSTANCE)
        if not is_valid_uid(sop_uid):
            study.rejections.append(Rejection("invalid-uid", f"SOP instance UID {str(sop_uid)[:70]!r}",
                                              series.series_uid))
            continue
        sop_class = first_value(item, TAG_SOP_CLASS)
        series.instances[sop_uid] = SourceInstance(
            sop_uid, sop_class if is_valid_uid(sop_class) else None, int_value(item, TAG_INSTANCE_NUMBER))
