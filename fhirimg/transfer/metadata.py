"""Step 2 — DICOM object metadata: WADO-RS series-level ``.../metadata`` (PS3.18 §10.4.1.1.2).

Series level on purpose: study-level metadata of a large study is the slow path other
viewers hit (minutes for a 20-series PET/CT). The answer reconciles what step 1 found:
SOP classes, modality, numbers, and instances QIDO did not list.
"""
from __future__ import annotations

from .budget import announced_size
from .client import TransferClient, Watch, build_url
from .qido import (TAG_BODY_PART, TAG_INSTANCE_NUMBER, TAG_MODALITY, TAG_SERIES_DESCRIPTION,
                   TAG_SERIES_NUMBER, TAG_SERIES_UID, TAG_SOP_CLASS, TAG_SOP_INSTANCE, TAG_STUDY_UID,
                   Rejection, SourceInstance, SourceSeries, SourceStudy, first_value, int_value, str_value)
from .uids import is_valid_uid


def retrieve_series_metadata(client: TransferClient, study_uid: str, series: SourceSeries,
                             watch: Watch | None = None) -> list[dict]:
    """GET ``/studies/{s}/series/{se}/metadata`` as a list of DICOM JSON datasets."""
    url = build_url(series.base_url, ["studies", study_uid, "series", series.series_uid, "metadata"])
    answer = client.get_json(url, watch=watch)
    if not isinstance(answer, list):
        raise ValueError(f"series metadata of {series.series_uid} is not a JSON array")
    return [item for item in answer if isinstance(item, dict)]


def reconcile_series(series: SourceSeries, datasets: list[dict], study: SourceStudy) -> None:
    """Merge metadata into the series found by QIDO; refuse objects of another study or series.

    The metadata also announces each instance's size, which bounds what its part may bring.
    """
    for dataset in datasets:
        sop_uid = first_value(dataset, TAG_SOP_INSTANCE)
        if not is_valid_uid(sop_uid):
            study.rejections.append(Rejection("invalid-uid", f"SOP instance UID {str(sop_uid)[:70]!r} in metadata",
                                              series.series_uid))
            continue
        if (first_value(dataset, TAG_STUDY_UID) != study.study_uid
                or first_value(dataset, TAG_SERIES_UID) != series.series_uid):
            study.rejections.append(Rejection("unexpected-uid", "metadata names another study or series",
                                              series.series_uid, sop_uid))
            continue
        instance = series.instances.setdefault(sop_uid, SourceInstance(sop_uid))
        sop_class = first_value(dataset, TAG_SOP_CLASS)
        if is_valid_uid(sop_class):
            instance.sop_class_uid = sop_class
        instance.number = int_value(dataset, TAG_INSTANCE_NUMBER) or instance.number
        instance.announced_bytes = announced_size(dataset)
        fill_series_attributes(series, dataset)
    series.is_described = True


def fill_series_attributes(series: SourceSeries, dataset: dict) -> None:
    series.modality = series.modality or str_value(dataset, TAG_MODALITY, 16)
    series.number = series.number if series.number is not None else int_value(dataset, TAG_SERIES_NUMBER)
    series.description = series.description or str_value(dataset, TAG_SERIES_DESCRIPTION, 64)
    series.body_part = series.body_part or str_value(dataset, TAG_BODY_PART, 16)
