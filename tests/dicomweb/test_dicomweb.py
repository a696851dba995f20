"""fhirimg's own DICOMweb service (PS3.18): QIDO-RS, WADO-RS, metadata and frames over the blob store.

Instances are placed in the blob store the way the worker places them (staged, checked
with pydicom, renamed), so these tests need no source archive.
"""
from __future__ import annotations

import io

import pydicom
import pytest

from fhirimg.transfer.dicomcheck import Expectation, inspect_part10

from ..transfer.dicomfactory import make_study, to_part10
from ..transfer.site import make_site, parts_by_sop

DICOM = 'multipart/related; type="application/dicom"'


@pytest.fixture
def site(tmp_path):
    return make_site(tmp_path)


@pytest.fixture
def stored(site):
    """Two studies in the blob store: one CT+MR of 2 series x 3, one CT of 1 x 2 for another patient."""
    first = make_study(series=2, instances=3, rows=32, columns=32, seed=41, patient_id="PAT-A")
    second = make_study(series=1, instances=2, rows=32, columns=32, seed=42, patient_id="PAT-B")
    blobstore = site.context().blobstore
    for study in (first, second):
        for series in study.series:
            for sop, data in series.instances.items():
                staged = blobstore.open_staging()
                staged.write(data)
                staged.finish()
                record = inspect_part10(staged.path, Expectation(study.study_uid, series.series_uid,
                                                                 frozenset([sop])))
                blobstore.commit(staged, record)
    return first, second


def qido(site, path, **params):
    response = site.client.get("/dicom-web" + path, query_string=params)
    assert response.status_code == 200, response.data[:300]
    assert response.headers["Content-Type"] == "application/dicom+json"
    return response.json


def value(item, tag):
    return item[tag]["Value"][0]


def test_search_for_studies_returns_counts_and_modalities(site, stored):
    first, second = stored
    studies = {value(s, "0020000D"): s for s in qido(site, "/studies")}
    assert set(studies) == {first.study_uid, second.study_uid}
    one = studies[first.study_uid]
    assert value(one, "00201206") == 2 and value(one, "00201208") == 6
    assert one["00080061"]["Value"] == ["CT", "MR"]
    assert value(one, "00100020") == "PAT-A"
    assert value(one, "00081190") == f"http://fhirimg.test/dicom-web/studies/{first.study_uid}"


@pytest.mark.parametrize("params, expected", [
    ({"PatientID": "PAT-B"}, {"second"}),
    ({"00100020": "PAT-A"}, {"first"}),
    ({"PatientID": "PAT-*"}, {"first", "second"}),
    ({"PatientID": "NOBODY"}, set()),
    ({"StudyDate": "20260101-20261231"}, {"first", "second"}),
    ({"StudyDate": "20270101-"}, set()),
    ({"ModalitiesInStudy": "MR"}, {"first"}),
])
def test_search_for_studies_matches_like_ps3_4(site, stored, params, expected):
    names = {stored[0].study_uid: "first", stored[1].study_uid: "second"}
    assert {names[value(s, "0020000D")] for s in qido(site, "/studies", **params)} == expected


def test_study_uid_list_limit_and_offset_page_the_answer(site, stored):
    uids = f"{stored[0].study_uid},{stored[1].study_uid}"
    all_studies = qido(site, "/studies", StudyInstanceUID=uids)
    assert len(all_studies) == 2
    first_page = qido(site, "/studies", StudyInstanceUID=uids, limit=1)
    second_page = qido(site, "/studies", StudyInstanceUID=uids, limit=1, offset=1)
    assert [first_page[0], second_page[0]] == all_studies


def test_includefield_adds_attributes_and_defaults_leave_them_out(site, stored):
    plain = qido(site, "/studies", PatientID="PAT-A")[0]
    assert "00081030" in plain and "00180050" not in plain  # StudyDescription is a default; SliceThickness not
    wide = qido(site, "/studies", PatientID="PAT-A", includefield="SliceThickness")[0]
    assert value(wide, "00180050") == 2.5


def test_search_for_series_filters_by_modality(site, stored):
    first, _ = stored
    series = qido(site, f"/studies/{first.study_uid}/series", Modality="MR")
    assert [value(s, "0020000E") for s in series] == [s.series_uid for s in first.series if s.modality == "MR"]
    assert value(series[0], "00201209") == 3


def test_search_for_all_series_spans_studies(site, stored):
    first, second = stored
    everything = qido(site, "/series")
    assert {value(s, "0020000E") for s in everything} == {s.series_uid for s in first.series + second.series}
    only_b = qido(site, "/series", PatientID="PAT-B", includefield="PatientID")
    assert [value(s, "0020000E") for s in only_b] == [second.series[0].series_uid]


def test_search_for_instances_of_a_series_and_of_a_study(site, stored):
    first, _ = stored
    series = first.series[0]
    found = qido(site, f"/studies/{first.study_uid}/series/{series.series_uid}/instances")
    assert {value(i, "00080018") for i in found} == set(series.instances)
    assert len(qido(site, f"/studies/{first.study_uid}/instances")) == 6
    assert [value(i, "00200013") for i in found] == [1, 2, 3]


@pytest.mark.parametrize("path", ["/studies", "/studies/{study}", "/studies/{study}/series/{series}",
                                  "/studies/{study}/series/{series}/instances/{sop}"])
def test_retrieve_is_multipart_dicom_byte_identical_to_what_was_stored(site, stored, path):
    first, _ = stored
    series = first.series[1]
    sop = sorted(series.instances)[0]
    if path == "/studies":
        path = "/studies/{study}"
    url = "/dicom-web" + path.format(study=first.study_uid, series=series.series_uid, sop=sop)
    response = site.client.get(url, headers={"Accept": DICOM + "; transfer-syntax=*"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(DICOM + "; boundary=")
    parts = parts_by_sop(response.data, response.headers["Content-Type"])
    expected = (first.instances if "series" not in path else
                series.instances if "instances" not in path else {sop: series.instances[sop]})
    assert parts == expected


def test_retrieve_without_accept_is_served_as_stored(site, stored):
    first, _ = stored
    response = site.client.get(f"/dicom-web/studies/{first.study_uid}")
    assert response.status_code == 200
    assert parts_by_sop(response.data, response.headers["Content-Type"]) == first.instances


@pytest.mark.parametrize("accept", ["application/json", 'multipart/related; type="image/jpeg"',
                                    DICOM + "; transfer-syntax=1.2.840.10008.1.2.4.50"])
def test_retrieve_in_a_form_we_cannot_serve_is_406(site, stored, accept):
    response = site.client.get(f"/dicom-web/studies/{stored[0].study_uid}", headers={"Accept": accept})
    assert response.status_code == 406
    assert response.json["resourceType"] == "OperationOutcome"


def test_metadata_is_the_dicom_json_of_each_instance_without_pixel_data(site, stored):
    first, _ = stored
    series = first.series[0]
    response = site.client.get(f"/dicom-web/studies/{first.study_uid}/series/{series.series_uid}/metadata",
                               headers={"Accept": "application/dicom+json"})
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/dicom+json"
    by_sop = {value(item, "00080018"): item for item in response.json}
    assert set(by_sop) == set(series.instances)
    for sop, data in series.instances.items():
        ds = pydicom.dcmread(io.BytesIO(data))
        item = by_sop[sop]
        # Pixel Data is named, not carried: a BulkDataURI that answers with its bytes.
        bulk = item["7FE00010"]
        assert set(bulk) == {"vr", "BulkDataURI"} and bulk["vr"] == "OW" and "InlineBinary" not in bulk
        assert bulk["BulkDataURI"] == (f"http://fhirimg.test/dicom-web/studies/{first.study_uid}/series/"
                                       f"{series.series_uid}/instances/{sop}/bulkdata/7FE00010")
        assert value(item, "00280010") == ds.Rows and value(item, "00100020") == ds.PatientID
        assert value(item, "00083002") == ds.file_meta.TransferSyntaxUID  # Available Transfer Syntax UID
        assert not [tag for tag in item if tag.startswith("0002")]  # no File Meta group (as Orthanc)
    assert len(site.client.get(f"/dicom-web/studies/{first.study_uid}/metadata").json) == 6


def test_the_pixel_data_bulkdata_uri_of_the_metadata_answers_the_pixel_data(site, stored):
    from ..transfer.multipart_reference import reference_parts
    first, _ = stored
    series = first.series[0]
    sop, data = sorted(series.instances.items())[0]
    meta = site.client.get(f"/dicom-web/studies/{first.study_uid}/series/{series.series_uid}/instances/{sop}/metadata")
    uri = meta.json[0]["7FE00010"]["BulkDataURI"].replace("http://localhost", "")
    response = site.client.get(uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status_code == 200
    assert reference_parts(response.data, response.headers["Content-Type"]) == [pydicom.dcmread(io.BytesIO(data)).PixelData]
    single = site.client.get(uri, headers={"Accept": "application/octet-stream"})
    assert single.status_code == 200 and single.mimetype == "application/octet-stream"
    assert single.data == pydicom.dcmread(io.BytesIO(data)).PixelData


@pytest.mark.parametrize("accept", ['multipart/related; type="*/*"', 'multipart/related; type="application/*"',
                                    "multipart/related", "*/*", ""])
def test_frames_answer_the_accept_headers_clients_send_by_default(site, stored, accept):
    """dicomweb-client's retrieve_instance_frames() sends type="*/*" (it was a 406)."""
    first, _ = stored
    series = first.series[0]
    sop = sorted(series.instances)[0]
    url = f"/dicom-web/studies/{first.study_uid}/series/{series.series_uid}/instances/{sop}/frames/1"
    response = site.client.get(url, headers={"Accept": accept} if accept else {})
    assert response.status_code == 200 and 'type="application/octet-stream"' in response.headers["Content-Type"]
    refused = site.client.get(url, headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert refused.status_code == 406


def test_frames_of_uncompressed_pixel_data(site, stored):
    first, _ = stored
    series = first.series[0]
    sop, data = sorted(series.instances.items())[0]
    url = f"/dicom-web/studies/{first.study_uid}/series/{series.series_uid}/instances/{sop}/frames/1"
    response = site.client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert response.status_code == 200
    from ..transfer.multipart_reference import reference_parts
    assert reference_parts(response.data, response.headers["Content-Type"]) == \
        [pydicom.dcmread(io.BytesIO(data)).PixelData]
    assert site.client.get(url[:-1] + "2").status_code == 404
    assert site.client.get(url[:-1] + "0").status_code == 400


@pytest.mark.parametrize("path", ["/studies/1.2..3", "/studies/..%5C..%5Cetc", "/studies/1.2.3%00", "/studies/1.2.3/series/01.2",
                                  "/studies/1.2.3/series/1.2/instances/1.a/metadata", "/studies/" + "1." * 40 + "1",
                                  "/studies/1.2.3/series/1.2/instances/x/frames/1"])
def test_malformed_uids_are_400_before_anything_is_looked_up(site, stored, path):
    response = site.client.get("/dicom-web" + path)
    assert response.status_code == 400
    assert "not a valid DICOM UID" in response.json["issue"][0]["diagnostics"]


@pytest.mark.parametrize("path", ["/studies/1.2.3", "/studies/1.2.3/metadata", "/studies/1.2.3/series",
                                  "/studies/{study}/series/1.2.3", "/studies/{study}/series/1.2.3/instances",
                                  "/studies/{study}/series/{series}/instances/1.2.3"])
def test_unknown_uids_are_404(site, stored, path):
    first, _ = stored
    path = path.format(study=first.study_uid, series=first.series[0].series_uid)
    response = site.client.get("/dicom-web" + path)
    assert response.status_code == 404
    assert response.json["issue"][0]["code"] == "not-found"


@pytest.mark.parametrize("params", [{"NoSuchKeyword": "x"}, {"limit": "0"}, {"offset": "-1"},
                                    {"includefield": "Bogus"}])
def test_bad_query_parameters_are_400_naming_the_parameter(site, stored, params):
    response = site.client.get("/dicom-web/studies", query_string=params)
    assert response.status_code == 400
    assert response.json["issue"][0]["expression"]


@pytest.mark.parametrize("wanted, found", [
    ("test*", 2), ("*PATIENT", 2), ("*atie*", 2), ("test^patient", 2), ("TEST^PATIENT^^", 2),
    ("t?st*", 2), ("nobody*", 0), ("Test", 0),
])
def test_person_names_match_case_insensitively_with_or_without_wildcards(site, stored, wanted, found):
    """Issue 21: OHIF's study-list filter sends `*viewer*` in lower case; exact PN matching
    was already case-insensitive, wildcard matching was not (0 results where Orthanc finds 2)."""
    assert len(qido(site, "/studies", PatientName=wanted)) == found


def test_all_instances_are_searchable_at_the_top_level_with_study_and_series_attributes(site, stored):
    first, second = stored
    everything = qido(site, "/instances")
    assert len(everything) == 8
    one = everything[0]
    for tag in ("00080018", "0020000E", "0020000D", "00100020", "00080060", "00081190"):
        assert tag in one, tag  # instance, series and study attributes (PS3.18 10.6.3.3.1)
    of_b = qido(site, "/instances", PatientID="PAT-B")
    assert {value(i, "0020000D") for i in of_b} == {second.study_uid} and len(of_b) == 2
    series = first.series[1].series_uid
    narrowed = qido(site, "/instances", SeriesInstanceUID=series)
    assert {value(i, "0020000E") for i in narrowed} == {series} and len(narrowed) == 3
    sop = next(iter(first.series[0].instances))
    assert [value(i, "00080018") for i in qido(site, "/instances", SOPInstanceUID=sop)] == [sop]
    pages = qido(site, "/instances", limit=3) + qido(site, "/instances", limit=3, offset=3) + \
        qido(site, "/instances", limit=3, offset=6)
    assert pages == everything


def test_an_all_instances_answer_over_the_maximum_says_so(site, stored, monkeypatch):
    from fhirimg.dicomweb import index, qido as qido_module
    monkeypatch.setattr(qido_module, "ALL_INSTANCES_MAX", 5)
    monkeypatch.setattr(index, "BATCH", 2)  # several keyed batches
    response = site.client.get("/dicom-web/instances")
    assert response.status_code == 200 and len(response.json) == 5
    assert response.headers["Warning"].startswith("299 ") and "exceeded the maximum" in response.headers["Warning"]
    assert "Warning" not in site.client.get("/dicom-web/instances", query_string={"limit": 5}).headers


def test_all_series_come_with_their_study_attributes(site, stored):
    series = qido(site, "/series", PatientID="PAT-A")
    assert len(series) == 2 and all(value(s, "00100020") == "PAT-A" and "0020000E" in s for s in series)


def test_other_bulk_values_are_bulkdata_uris_that_answer_their_bytes(site):
    """Issue 21: only Pixel Data had a BulkDataURI; an ICC profile or an overlay was
    silently missing from the metadata."""
    study = make_study(series=1, instances=1, rows=16, columns=16, seed=43)
    sop, data = next(iter(study.instances.items()))
    ds = pydicom.dcmread(io.BytesIO(data))
    profile, overlay = bytes(range(256)) * 12, bytes([1, 2]) * 2000
    ds.ICCProfile = profile
    ds.add_new(0x60003000, "OW", overlay)
    data = to_part10(ds)
    blobstore = site.context().blobstore
    staged = blobstore.open_staging()
    staged.write(data)
    staged.finish()
    blobstore.commit(staged, inspect_part10(staged.path, Expectation(study.study_uid, ds.SeriesInstanceUID,
                                                                     frozenset([sop]))))
    base = f"/dicom-web/studies/{study.study_uid}/series/{ds.SeriesInstanceUID}/instances/{sop}"
    [meta] = site.client.get(base + "/metadata").json
    for tag, expected in (("00282000", profile), ("60003000", overlay)):
        uri = meta[tag]["BulkDataURI"]
        assert uri == f"http://fhirimg.test{base}/bulkdata/{tag}" and "Value" not in meta[tag]
        single = site.client.get(uri, headers={"Accept": "application/octet-stream"})
        assert single.status_code == 200 and single.data == expected
        multipart = site.client.get(uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
        assert multipart.status_code == 200 and expected in multipart.data
    assert site.client.get(base + "/bulkdata/00100010").status_code == 404  # not a bulk value here
    assert site.client.get(base + "/bulkdata/zz").status_code == 404


@pytest.mark.parametrize("accept", ["application/dicom+xml", 'multipart/related; type="application/dicom+xml"'])
def test_qido_and_metadata_answer_native_dicom_xml_one_part_per_data_set(site, stored, accept):
    """PS3.18 8.7.3.2 / PS3.19 A.1; fhirimg answered 406 where Orthanc answers."""
    from xml.etree import ElementTree
    from ..transfer.multipart_reference import reference_parts
    first, _ = stored
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    response = site.client.get("/dicom-web/studies", query_string={"PatientID": "PAT-A"}, headers={"Accept": accept})
    assert response.status_code == 200
    assert 'multipart/related; type="application/dicom+xml"' in response.headers["Content-Type"]
    [part] = reference_parts(response.data, response.headers["Content-Type"])
    root = ElementTree.fromstring(part)
    uid = root.find("d:DicomAttribute[@tag='0020000D']/d:Value", ns)
    assert uid.text == first.study_uid and uid.get("number") == "1"
    name = root.find("d:DicomAttribute[@keyword='PatientName']/d:PersonName/d:Alphabetic", ns)
    assert [name.find("d:FamilyName", ns).text, name.find("d:GivenName", ns).text] == ["Test", "Patient"]
    series = first.series[0]
    meta = site.client.get(f"/dicom-web/studies/{first.study_uid}/series/{series.series_uid}/metadata",
                           headers={"Accept": accept})
    parts = reference_parts(meta.data, meta.headers["Content-Type"])
    assert len(parts) == 3
    bulk = ElementTree.fromstring(parts[0]).find("d:DicomAttribute[@tag='7FE00010']/d:BulkData", ns)
    assert bulk.get("uri").endswith("/bulkdata/7FE00010")
    refused = site.client.get("/dicom-web/studies", headers={"Accept": "text/html"})
    assert refused.status_code == 406 and "application/dicom+xml" in refused.json["issue"][0]["diagnostics"]


def test_reads_do_not_keep_the_sqlite_wal_from_starting_over(site, stored):
    """A request's read connection was open across its audit commit, so SQLite's WAL never
    restarted: it grew by ~100 KB per request (300 MB after 3 000) and requests slowed."""
    import os
    first, _ = stored
    series = first.series[0]
    sop = sorted(series.instances)[0]
    url = f"/dicom-web/studies/{first.study_uid}/series/{series.series_uid}/instances/{sop}/metadata"
    database = site.config["database_url"].removeprefix("sqlite:///")
    for _ in range(400):
        assert site.client.get(url).status_code == 200
        site.client.get("/dicom-web/studies", query_string={"PatientID": "PAT-A"})
    assert os.path.getsize(database + "-wal") < 12 * 2**20  # auto-checkpoint restarts it at ~4 MB


def test_native_xml_is_well_formed_for_any_text_and_names_private_creators():
    """PS3.19 A.1: a form feed (legal in LT/ST/UT) made the document ill-formed; private
    attributes carry their Private Creator."""
    from xml.etree import ElementTree
    from fhirimg.dicomweb.nativexml import native_xml
    document = native_xml({"00081030": {"vr": "LO", "Value": ["CHEST\x0cABDOMEN"]},
                           "00090010": {"vr": "LO", "Value": ["ACME 1.0"]},
                           "00091001": {"vr": "LO", "Value": ["vendor value"]},
                           "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe\x01^Jane"}]}})
    root = ElementTree.fromstring(document)  # raises on an ill-formed document
    ns = {"d": "http://dicom.nema.org/PS3.19/models/NativeDICOM"}
    assert root.find("d:DicomAttribute[@tag='00091001']", ns).get("privateCreator") == "ACME 1.0"
    assert root.find("d:DicomAttribute[@tag='00081030']/d:Value", ns).text == "CHEST\ufffdABDOMEN"


def test_an_all_instances_search_stops_after_the_scan_bound_and_says_so(site, stored, monkeypatch):
    from fhirimg.dicomweb import qido as qido_module
    monkeypatch.setattr(qido_module, "ALL_INSTANCES_SCANNED", 3)
    response = site.client.get("/dicom-web/instances", query_string={"PatientName": "nobody"})
    assert response.status_code == 200 and response.json == []
    assert "stopped after 3 instances" in response.headers["Warning"]
