"""Reads of the instance index (transfer.schema.dicom_instance) that DICOMweb answers from.

QIDO-RS and WADO-RS metadata never open a DICOM file: every instance's DICOM JSON was
stored when it entered the blob store. Series and studies are represented by one of
their instances (the lowest SOP Instance UID) plus counts computed here.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import orjson
from sqlalchemy import bindparam, func, select, tuple_
from sqlalchemy.engine import Engine

from fhirimg.store import driver
from fhirimg.transfer.schema import dicom_instance

BATCH = 500


@contextmanager
def reading(bind):
    """A connection to read with: `bind` itself if it is one (a request's reads share one
    connection: one checkout, one BEGIN), else a new one from the engine."""
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            yield conn
    else:
        yield bind


@dataclass
class SeriesSummary:
    study_uid: str
    series_uid: str
    instance_count: int
    attributes: dict = field(default_factory=dict)


@dataclass
class StudySummary:
    study_uid: str
    series: list[SeriesSummary] = field(default_factory=list)

    @property
    def instance_count(self) -> int:
        return sum(s.instance_count for s in self.series)

    @property
    def attributes(self) -> dict:
        return self.series[0].attributes if self.series else {}


@dataclass
class StoredInstance:
    study_uid: str
    series_uid: str
    sop_uid: str
    path: str
    size: int
    transfer_syntax_uid: str
    instance_number: int | None
    attributes: dict
    sha256: str = ""


def series_summaries(bind, study_uid: str | None = None,
                     series_uid: str | None = None, study_uids: list[str] | None = None,
                     allowed=None) -> list[SeriesSummary]:
    """One summary per stored series (optionally of one study, some studies, or one series);
    `allowed` is a SELECT of the study UIDs access control lets through (None: all).
    One statement: the groups joined to their representative's attributes."""
    query = summaries_statement(study_uid is not None, series_uid is not None, study_uids is not None)
    if allowed is not None:
        query = query.where(dicom_instance.c.study_uid.in_(allowed))
    params = {"study": study_uid, "series": series_uid, "studies": (study_uids or [])[:1000]}
    with reading(bind) as conn:
        rows = conn.execute(query, params).all()
    return [SeriesSummary(row.study_uid, row.series_uid, row.n, orjson.loads(row.attributes)) for row in rows]


@functools.cache
def summaries_statement(by_study: bool, by_series: bool, by_studies: bool):
    """Built once per shape (building it cost more than the query on a small index)."""
    t = dicom_instance
    groups = select(t.c.study_uid, t.c.series_uid, func.min(t.c.sop_uid).label("rep"), func.count().label("n"))
    if by_study:
        groups = groups.where(t.c.study_uid == bindparam("study"))
    if by_series:
        groups = groups.where(t.c.series_uid == bindparam("series"))
    if by_studies:
        groups = groups.where(t.c.study_uid.in_(bindparam("studies", expanding=True)))
    groups = groups.group_by(t.c.study_uid, t.c.series_uid).subquery("groups")
    return (select(groups.c.study_uid, groups.c.series_uid, groups.c.n, t.c.attributes)
            .select_from(groups.join(t, t.c.sop_uid == groups.c.rep))
            .order_by(groups.c.study_uid, groups.c.series_uid))


def study_summaries(bind, study_uids: list[str] | None = None, allowed=None) -> list[StudySummary]:
    """Studies held, optionally only those named (a QIDO StudyInstanceUID list, done in SQL)."""
    studies: dict[str, StudySummary] = {}
    for series in series_summaries(bind, study_uids=study_uids, allowed=allowed):
        studies.setdefault(series.study_uid, StudySummary(series.study_uid)).series.append(series)
    return list(studies.values())


def stored_instances(bind, study_uid: str, series_uid: str | None = None,
                     sop_uid: str | None = None) -> list[StoredInstance]:
    """Instances of a study/series/instance in InstanceNumber order (what WADO-RS streams).

    Prebuilt SQL on the driver's cursor (store.driver): every WADO-RS request asks this, and
    through SQLAlchemy Core it cost 0.24 ms of a 2 ms metadata request."""
    with reading(bind) as conn:
        mark = "?" if conn.dialect.name == "sqlite" else "%s"
        sql, params = INSTANCES_SQL + f" WHERE study_uid = {mark}", [study_uid]
        for column, value in (("series_uid", series_uid), ("sop_uid", sop_uid)):
            if value is not None:
                sql += f" AND {column} = {mark}"
                params.append(value)
        rows = driver.fetch_all(conn, sql + " ORDER BY series_uid, instance_number, sop_uid", tuple(params))
    return [StoredInstance(study, series, sop, path, size, syntax, number, orjson.loads(attributes), sha256)
            for study, series, sop, path, size, syntax, number, attributes, sha256 in rows]


INSTANCES_SQL = ("SELECT study_uid, series_uid, sop_uid, path, size, transfer_syntax_uid, instance_number, "
                 "attributes, sha256 FROM dicom_instance")


def iter_instances(engine: Engine, uid_filters: dict[str, list[str]], allowed=None,
                   batch: int | None = None) -> Iterator[StoredInstance]:
    """Every instance held (QIDO's all-instances query), in (study, series, SOP) UID order,
    read `batch` rows at a time by key: memory stays bounded however many are held.
    `uid_filters` narrows in SQL by UID lists: {"study_uid": [...], "series_uid": [...],
    "sop_uid": [...]}; `allowed` is access control's SELECT of study UIDs (None: all)."""
    t = dicom_instance
    batch = batch or BATCH
    key = None
    while True:
        query = select(t).order_by(t.c.study_uid, t.c.series_uid, t.c.sop_uid).limit(batch)
        for column, uids in uid_filters.items():
            query = query.where(t.c[column].in_(uids[:1000]))
        if allowed is not None:
            query = query.where(t.c.study_uid.in_(allowed))
        if key is not None:
            query = query.where(tuple_(t.c.study_uid, t.c.series_uid, t.c.sop_uid) > key)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
        for r in rows:
            yield StoredInstance(r.study_uid, r.series_uid, r.sop_uid, r.path, r.size, r.transfer_syntax_uid,
                                 r.instance_number, orjson.loads(r.attributes), r.sha256)
        if len(rows) < batch:
            return
        key = (rows[-1].study_uid, rows[-1].series_uid, rows[-1].sop_uid)
