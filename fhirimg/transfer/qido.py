"""Step 1 — what exists: QIDO-RS searches for a study's series and their instances (PS3.18 §10.6).

Large archives cap answers, so every search pages with ``limit``/``offset`` until a page
comes back short. UIDs in answers are validated before anything else sees them: a
source naming an instance ``../../etc`` gets that entry rejected and recorded.

What a search holds is bounded: each page is read as it arrives and refused as soon as it
passes its byte cap, and the pages are handed on one at a time, so only one page's JSON
and parsed objects are alive beside the small records kept of them. A page is parsed
whole with orjson rather than incrementally: under the cap (8 MiB at the default page
size) that is a few tens of MB for an instant, while an incremental parser (ijson) would be
a new dependency and several times slower on every ordinary answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from .client import SourceError, TransferClient, Watch, build_url
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
# One page may bring 16 KiB per result asked for (an answer is ~1-3 KB a result), and at
# least 8 MiB (an archive that ignores ``limit`` and answers 5 000 instances at once): a
# single page of 29 MB was parsed into 560 MB before the search budget stopped the next.
MAX_RESULT_BYTES = 16 << 10
MIN_PAGE_BYTES = 8 << 20


@dataclass
class SourceInstance:
    sop_uid: str
    sop_class_uid: str | None = None
    number: int | None = None
    announced_bytes: int | None = None  # what its metadata announces (budget.announced_size)


@dataclass
class SourceSeries:
    series_uid: str
    modality: str | None = None
    number: int | None = None
    description: str | None = None
    body_part: str | None = None
    base_url: str = ""
    instances: dict[str, SourceInstance] = field(default_factory=dict)
    is_described: bool = False  # its metadata (step 2) has been reconciled


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
                 includefields: tuple[str, ...] = (), watch: Watch | None = None) -> Iterator[dict]:
    """The results of one QIDO search, page after page (limit/offset), within its budgets."""
    received = results = 0
    search = "/".join(segments)
    for _ in range(MAX_PAGES):
        query = [("limit", str(page_size)), ("offset", str(results))]
        query += [("includefield", tag) for tag in includefields]
        page, size = read_page(client, build_url(base, segments, query), search, page_size,
                               MAX_SEARCH_BYTES - received, watch)
        received += size
        items = [item for item in page if isinstance(item, dict)]
        results += len(items)
        if results > MAX_RESULTS:
            raise ValueError(f"QIDO search {search} answered more than {MAX_RESULTS} results")
        is_last = len(page) < page_size
        del page  # not alive while the next page is read
        yield from items
        if is_last:
            return
        del items
    raise ValueError(f"QIDO search {search} did not end after {MAX_PAGES} pages")


def read_page(client: TransferClient, url: str, search: str, page_size: int, remaining: int,
              watch: Watch | None) -> tuple[list, int]:
    """One page as a JSON array, refused as soon as it passes the page's or the search's cap."""
    page_cap = max(MIN_PAGE_BYTES, page_size * MAX_RESULT_BYTES)
    try:
        page, size = client.get_json_sized(url, max_bytes=min(page_cap, remaining), watch=watch)
    except SourceError as exc:
        if "larger than the limit" not in str(exc):
            raise
        if remaining <= page_cap:
            raise ValueError(f"QIDO search {search} answered more than {MAX_SEARCH_BYTES} bytes in all") from None
        raise ValueError(f"QIDO search {search} answered a page of more than {page_cap} bytes") from None
    if not isinstance(page, list):
        raise ValueError(f"QIDO answer for {search} is not a JSON array")
    return page, size


def search_for_series(client: TransferClient, base: str, study_uid: str, page_size: int,
                      study: SourceStudy, watch: Watch | None = None) -> list[SourceSeries]:
    """QIDO ``/studies/{s}/series``: the series of the study with valid UIDs."""
    found: dict[str, SourceSeries] = {}
    for item in search_paged(client, base, ["studies", study_uid, "series"], page_size,
                             (TAG_SERIES_DESCRIPTION, TAG_BODY_PART), watch):
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
                         study: SourceStudy, watch: Watch | None = None) -> None:
    """QIDO ``/studies/{s}/series/{se}/instances`` into ``series.instances``."""
    segments = ["studies", study_uid, "series", series.series_uid, "instances"]
    for item in search_paged(client, series.base_url, segments, page_size, watch=watch):
        sop_uid = first_value(item, TAG_SOP_INSTANCE)
        if not is_valid_uid(sop_uid):
            study.rejections.append(Rejection("invalid-uid", f"SOP instance UID {str(sop_uid)[:70]!r}",
                                              series.series_uid))
            continue
        sop_class = first_value(item, TAG_SOP_CLASS)
        series.instances[sop_uid] = SourceInstance(
            sop_uid, sop_class if is_valid_uid(sop_class) else None, int_value(item, TAG_INSTANCE_NUMBER))
