"""The DICOM-to-ImagingStudy mapping and Patient matching, on headers written with pydicom."""
from __future__ import annotations

import pytest
from pydicom.dataset import Dataset

from fhirimg.push.mapping import fhir_datetime, human_name, merged_study
from fhirimg.push.patients import PatientUnmatched, escape, patient_key
from fhirimg.push.settings import PushSettings
from fhirimg.resources import validate_resource
from fhirimg.transfer.blobstore import InstanceRecord

CT = "1.2.840.10008.5.1.4.1.1.2"


def record(**attributes) -> InstanceRecord:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID = "1.2.3", "1.2.3.4", "1.2.3.4.5", CT
    ds.Modality, ds.PatientID = "CT", "MRN-1"
    for name, value in attributes.items():
        setattr(ds, name, value)
    return InstanceRecord(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, CT, "1.2.840.10008.1.2.1",
                          attributes=ds.to_json_dict())


@pytest.mark.parametrize("da, tm, offset, expected", [
    ("20261120", "101500", "", "2026-11-20"),  # no zone in the headers: no time of day
    ("20261120", "101500.123", "+0130", "2026-11-20T10:15:00+01:30"),
    ("20261120", "1015", "-0500", "2026-11-20T10:15:00-05:00"),
    ("20261320", "", "", None), ("", "", "", None), ("2026112", "", "", None),
    ("20261120", "251500", "+0000", "2026-11-20"),
])
def test_dates_and_times(da, tm, offset, expected):
    assert fhir_datetime(da, tm, offset) == expected


def test_person_names():
    assert human_name("Doe^John^Q^Dr^Jr") == {"use": "usual", "text": "Dr John Q Doe Jr", "family": "Doe",
                                             "given": ["John", "Q"], "prefix": ["Dr"], "suffix": ["Jr"]}
    assert human_name("") is None


def test_series_and_study_elements_from_the_headers():
    first = record(StudyDate="20261120", StudyTime="0930", TimezoneOffsetFromUTC="+0100", Laterality="L",
                   BodyPartExamined="KNEE", SeriesNumber=3, SeriesDescription="sag PD", InstanceNumber=7,
                   PerformingPhysicianName="Tech^Tom", ReferringPhysicianName="Ref^Rita", AccessionNumber="A1",
                   StudyDescription="MRI KNEE", SeriesDate="20261120", SeriesTime="093500")
    first.attributes["00081032"] = {"vr": "SQ", "Value": [{
        "00080100": {"vr": "SH", "Value": ["24589-2"]}, "00080102": {"vr": "SH", "Value": ["LN"]},
        "00080104": {"vr": "LO", "Value": ["MRI knee"]}}]}
    study = merged_study(None, [first], "Patient/p1", "Endpoint/e")
    validate_resource(study, "ImagingStudy")
    assert study["started"] == "2026-11-20T09:30:00+01:00"
    assert study["procedure"] == [{"concept": {"coding": [{"code": "24589-2", "system": "http://loinc.org",
                                                            "display": "MRI knee"}]}}]
    [series] = study["series"]
    assert series["laterality"]["coding"][0]["code"] == "7771000"
    assert series["bodySite"]["concept"] == {"text": "KNEE", "coding": [{"system": "http://snomed.info/sct",
                                                                          "code": "72696002"}]}
    assert series["started"] == "2026-11-20T09:35:00+01:00" and series["number"] == 3
    assert series["performer"] == [{"actor": {"display": "Tech Tom"}}]
    assert series["instance"] == [{"uid": "1.2.3.4.5", "number": 7,
                                   "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT}"}}]
    assert study["identifier"][1]["value"] == "A1" and study["referrer"] == {"display": "Ref Rita"}


def test_merging_keeps_what_the_resource_has_and_counts_only_grow():
    current = {"resourceType": "ImagingStudy", "status": "registered", "subject": {"reference": "Patient/ehr"},
               "description": "EHR", "numberOfSeries": 5, "numberOfInstances": 100,
               "series": [{"uid": "1.2.3.4", "modality": {"coding": [{"code": "MR"}]}, "description": "EHR series",
                           "instance": [{"uid": "9.9", "sopClass": {"code": "urn:oid:1.2"}}]}]}
    merged = merged_study(current, [record(SeriesDescription="from DICOM", StudyDescription="DICOM")], None, "Endpoint/e")
    assert merged["description"] == "EHR" and merged["subject"] == {"reference": "Patient/ehr"}
    assert merged["status"] == "available" and merged["numberOfSeries"] == 5 and merged["numberOfInstances"] == 100
    [series] = merged["series"]
    assert series["description"] == "EHR series" and [i["uid"] for i in series["instance"]] == ["1.2.3.4.5", "9.9"]
    assert merged["identifier"][0] == {"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}
    assert merged_study(merged, [record(SeriesDescription="from DICOM")], None, "Endpoint/e") == merged


@pytest.mark.parametrize("issuer, issuers, system", [
    ("", {}, "urn:fhirimg:patient-id"),
    ("1.2.840.113619.6.1", {}, "urn:oid:1.2.840.113619.6.1"),
    ("HOSP_A", {"HOSP_A": "http://hosp-a.example/mrn"}, "http://hosp-a.example/mrn"),
])
def test_patient_identifier_system_follows_the_issuer(issuer, issuers, system):
    attributes = record(**({"IssuerOfPatientID": issuer} if issuer else {})).attributes
    key = patient_key(attributes, PushSettings(issuers=issuers))
    assert key.identifier == {"system": system, "value": "MRN-1"}


def test_an_unmapped_issuer_or_no_patient_id_matches_nobody():
    with pytest.raises(PatientUnmatched, match="not mapped"):
        patient_key(record(IssuerOfPatientID="HOSP_B").attributes, PushSettings())
    with pytest.raises(PatientUnmatched, match="empty"):
        patient_key(record(PatientID="").attributes, PushSettings())


def test_search_escaping_of_identifier_values():
    key = patient_key(record(PatientID="A|B,C$D").attributes, PushSettings())  # a backslash splits DICOM values
    assert key.criteria == [("identifier", "urn:fhirimg:patient-id|A\\|B\\,C\\$D")]
    assert escape("x\\y") == "x\\\\y"
