"""Synthetic but realistic CT/MR studies written with pydicom (16-bit pixel data)."""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass
class SyntheticSeries:
    series_uid: str
    modality: str
    instances: dict[str, bytes] = field(default_factory=dict)  # SOP UID -> Part-10 bytes


@dataclass
class SyntheticStudy:
    study_uid: str
    patient_id: str
    series: list[SyntheticSeries] = field(default_factory=list)

    @property
    def instances(self) -> dict[str, bytes]:
        return {sop: data for s in self.series for sop, data in s.instances.items()}

    def series_of(self, sop_uid: str) -> SyntheticSeries:
        return next(s for s in self.series if sop_uid in s.instances)


def make_study(series: int = 2, instances: int = 3, rows: int = 64, columns: int = 64,
               modalities: tuple[str, ...] = ("CT", "MR"), seed: int = 1,
               patient_id: str = "PAT-001") -> SyntheticStudy:
    """A study of `series` series × `instances` instances with deterministic random pixels."""
    rng = np.random.default_rng(seed)
    study = SyntheticStudy(generate_uid(UID_ROOT), patient_id)
    for series_index in range(series):
        modality = modalities[series_index % len(modalities)]
        synthetic = SyntheticSeries(generate_uid(UID_ROOT), modality)
        for number in range(1, instances + 1):
            sop_uid = generate_uid(UID_ROOT)
            ds = make_dataset(study.study_uid, synthetic.series_uid, sop_uid, modality,
                              series_index + 1, number, rows, columns, rng, patient_id)
            synthetic.instances[sop_uid] = to_part10(ds)
        study.series.append(synthetic)
    return study


def make_dataset(study_uid, series_uid, sop_uid, modality, series_number, instance_number,
                 rows, columns, rng, patient_id="PAT-001") -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate, ds.StudyTime = "20261120", "101500"
    ds.AccessionNumber = "ACC" + study_uid[-6:]
    ds.Modality = modality
    ds.Manufacturer = "fhirimg test"
    ds.ReferringPhysicianName = "Doe^Jane"
    ds.StudyDescription = "CHEST ABDOMEN"
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.PatientName = "Test^Patient"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [-200.0, -200.0, float(instance_number) * 2.5]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.FrameOfReferenceUID = generate_uid(UID_ROOT)
    ds.SliceThickness = 2.5
    ds.PixelSpacing = [0.78125, 0.78125]
    if modality == "CT":
        ds.KVP = 120
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
    else:
        ds.MagneticFieldStrength = 1.5
        ds.EchoTime, ds.RepetitionTime = 12.0, 500.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = rows, columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    return ds


def to_part10(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.preamble = b"\x00" * 128
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()
