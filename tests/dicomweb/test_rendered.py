"""Issue 21: rendered images and thumbnails (PS3.18 8.3.5, 10.4.1.1.3).

Each answer is decoded with Pillow and compared with a rendering computed here with numpy
from the original pixels (Modality LUT, then the VOI window of PS3.3 C.11.2.1.2), so the
expected image never comes from the code under test.
"""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from ..transfer.dicomfactory import make_study, to_part10
from .test_transcoding import Stored, dcmtk  # noqa: F401  (the DCMTK fixture)
from fhirimg.dicomweb import codecs


@pytest.fixture
def store(tmp_path):
    from ..transfer.site import make_site
    return Stored(make_site(tmp_path), tmp_path)


def ct(seed: int, rows: int = 48, columns: int = 40, **changes) -> bytes:
    study = make_study(series=1, instances=1, rows=rows, columns=columns, seed=seed, modalities=("CT",))
    ds = pydicom.dcmread(io.BytesIO(next(iter(study.instances.values()))))
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return to_part10(ds)


def linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out independently."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.where(x <= low, 0, np.where(x > high, 255, y))


def hounsfield(data: bytes) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(data))
    return ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def image_of(response) -> np.ndarray:
    assert response.status_code == 200, response.data[:300]
    return np.asarray(Image.open(io.BytesIO(response.data))).astype(int)


def test_an_instance_is_rendered_with_its_own_window(store):
    data = ct(80)
    uids = store.put(data, codecs.RLE)
    response = store.site.client.get(store.url(uids, "/rendered"), headers={"Accept": "image/png"})
    assert response.headers["Content-Type"] == "image/png"
    expected = linear(hounsfield(data), 40, 400)  # the instance's WindowCenter/Width
    assert np.abs(image_of(response) - expected).max() <= 1


@pytest.mark.parametrize("function", ["linear", "linear-exact", "sigmoid"])
def test_the_window_parameter_overrides_and_names_its_function(store, function):
    data = ct(81)
    uids = store.put(data)
    response = store.site.client.get(store.url(uids, "/rendered"), query_string={"window": f"500,1000,{function}"},
                                     headers={"Accept": "image/png"})
    x = hounsfield(data)
    expected = {"linear": lambda: linear(x, 500, 1000),
                "linear-exact": lambda: np.clip(((x - 500) / 1000 + 0.5) * 255, 0, 255),
                "sigmoid": lambda: 255 / (1 + np.exp(-4 * (x - 500) / 1000))}[function]()
    assert np.abs(image_of(response) - expected).max() <= 1


def test_without_any_window_the_full_range_is_used_and_monochrome1_is_inverted(store):
    data = ct(82, WindowCenter=None, WindowWidth=None, PhotometricInterpretation="MONOCHROME1")
    uids = store.put(data)
    x = hounsfield(data)
    expected = 255 - (x - x.min()) / (x.max() - x.min()) * 255
    got = image_of(store.site.client.get(store.url(uids, "/rendered"), headers={"Accept": "image/png"}))
    assert np.abs(got - expected).max() <= 1


def test_jpeg_is_the_default_and_quality_is_honoured(store):
    data = ct(83, rows=128, columns=128)
    uids = store.put(data)
    plain = store.site.client.get(store.url(uids, "/rendered"))
    assert plain.headers["Content-Type"] == "image/jpeg"
    expected = linear(hounsfield(data), 40, 400)
    assert np.abs(image_of(plain) - expected).mean() < 12  # noise is JPEG's worst case
    small = store.site.client.get(store.url(uids, "/rendered"), query_string={"quality": "10"})
    assert len(small.data) < len(plain.data) * 0.7
    gif = store.site.client.get(store.url(uids, "/rendered"), headers={"Accept": "image/gif"})
    assert gif.headers["Content-Type"] == "image/gif" and gif.data[:3] == b"GIF"


def test_viewport_scales_to_fit_and_crops_and_flips_a_region(store):
    data = ct(84, rows=48, columns=40)
    uids = store.put(data)
    fitted = image_of(store.site.client.get(store.url(uids, "/rendered"), query_string={"viewport": "20,200"},
                                            headers={"Accept": "image/png"}))
    assert fitted.shape == (24, 20)  # aspect kept: 40x48 into 20x200
    region = store.site.client.get(store.url(uids, "/rendered"), headers={"Accept": "image/png"},
                                   query_string={"viewport": "10,8,5,12,10,-8"})
    expected = linear(hounsfield(data), 40, 400)[4:12, 5:15][::-1]  # rows 12 back to 4: flipped
    assert np.abs(image_of(region) - expected).max() <= 1


def test_frames_of_a_compressed_multi_frame_instance_are_rendered_one_by_one(store):
    ds = pydicom.dcmread(io.BytesIO(ct(85)))
    rng = np.random.default_rng(85)
    frames = rng.integers(0, 4096, size=(3, ds.Rows, ds.Columns), dtype=np.uint16)
    ds.NumberOfFrames, ds.PixelData = 3, frames.tobytes()
    data = to_part10(ds)
    uids = store.put(data, codecs.JPEG_LS)
    second = image_of(store.site.client.get(store.url(uids, "/frames/2/rendered"), headers={"Accept": "image/png"}))
    assert np.abs(second - linear(frames[1] * 1.0 - 1024, 40, 400)).max() <= 1
    both = store.site.client.get(store.url(uids, "/frames/1,3/rendered"), headers={"Accept": "image/png"})
    assert both.headers["Content-Type"].startswith('multipart/related; type="image/png"')
    assert both.data.count(b"Content-Type: image/png") == 2
    assert store.site.client.get(store.url(uids, "/frames/4/rendered")).status_code == 404


def test_a_study_renders_every_image_and_its_thumbnail_is_small(store):
    study = make_study(series=2, instances=3, rows=256, columns=200, seed=86)
    for data in study.instances.values():
        store.put(data)
    response = store.site.client.get(f"/dicom-web/studies/{study.study_uid}/rendered")
    assert response.status_code == 200 and response.data.count(b"Content-Type: image/jpeg") == 6
    thumbnail = store.site.client.get(f"/dicom-web/studies/{study.study_uid}/thumbnail")
    assert thumbnail.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(thumbnail.data))
    assert max(image.size) == 128 and image.size == (100, 128)
    series = study.series[1].series_uid
    png = store.site.client.get(f"/dicom-web/studies/{study.study_uid}/series/{series}/thumbnail",
                                query_string={"viewport": "64,64"}, headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(png.data)).size == (50, 64)


@pytest.mark.parametrize("params, where", [
    ({"window": "abc,400"}, "window"), ({"window": "40,0"}, "window"), ({"window": "40,400,cubic"}, "window"),
    ({"viewport": "0,10"}, "viewport"), ({"viewport": "99999,10"}, "viewport"), ({"viewport": "10,10,500,500,5,5"},
                                                                                   "viewport"),
    ({"quality": "101"}, "quality"), ({"annotation": "patient"}, "annotation"), ({"colour": "red"}, "colour"),
])
def test_bad_rendering_parameters_are_400_naming_the_parameter(store, params, where):
    uids = store.put(ct(87))
    response = store.site.client.get(store.url(uids, "/rendered"), query_string=params)
    assert response.status_code == 400
    assert response.json["resourceType"] == "OperationOutcome" and response.json["issue"][0]["expression"] == [where]


def test_a_rendered_image_is_not_offered_as_dicom(store):
    uids = store.put(ct(88))
    refused = store.site.client.get(store.url(uids, "/rendered"), headers={"Accept": "application/dicom"})
    assert refused.status_code == 406 and refused.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("case", ["signed 12 of 16", "rgb planar", "rgb interleaved", "8-bit"])
def test_uncompressed_frames_are_read_as_pydicom_reads_them(case):
    """Rendering reads an uncompressed frame from its bytes and the index attributes, without
    parsing the file: the array must be pydicom's (sign extension, planar configuration)."""
    from fhirimg.dicomweb.rendered import JsonHeader
    from fhirimg.dicomweb.wado import native_array
    ds = pydicom.dcmread(io.BytesIO(ct(89, rows=6, columns=5)))
    rng = np.random.default_rng(89)
    if case == "signed 12 of 16":
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 12, 11
        values = rng.integers(-2048, 2048, size=(6, 5)).astype(np.int16)
        raw = (values.astype(np.uint16) & 0x0FFF) | 0xA000  # junk above bit 11, as old modalities left
        ds.PixelData = raw.astype("<u2").tobytes()
    elif case.startswith("rgb"):
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PlanarConfiguration = 1 if case == "rgb planar" else 0
        values = rng.integers(0, 256, size=(6, 5, 3)).astype(np.uint8)
        ds.PixelData = (values.transpose(2, 0, 1) if case == "rgb planar" else values).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = rng.integers(0, 256, size=(6, 5)).astype(np.uint8).tobytes()
    header = JsonHeader(ds.to_json_dict(bulk_data_threshold=1, bulk_data_element_handler=lambda e: None))
    ours = native_array(ds.PixelData, header)
    assert ours.dtype == ds.pixel_array.dtype and np.array_equal(ours, ds.pixel_array)
    if case == "signed 12 of 16":
        assert np.array_equal(ours, values)


def test_a_frame_list_naming_a_missing_frame_is_404_before_any_image_is_sent(store):
    uids = store.put(ct(90))
    response = store.site.client.get(store.url(uids, "/frames/1,2/rendered"))
    assert response.status_code == 404 and response.json["resourceType"] == "OperationOutcome"


def test_uncompressed_ybr_and_bit_packed_images_are_rendered_as_pydicom_decodes_them(store):
    """YBR_FULL bytes were drawn as if they were RGB; a 1-bit image (a segmentation) broke a
    study's rendered answer after its 200."""
    ds = pydicom.dcmread(io.BytesIO(ct(91, rows=8, columns=6)))
    rng = np.random.default_rng(91)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rng.integers(0, 256, size=(8, 6, 3)).astype(np.uint8).tobytes()
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    uids = store.put(to_part10(ds))
    png = image_of(store.site.client.get(store.url(uids, "/rendered"), headers={"Accept": "image/png"}))
    expected = pydicom.dcmread(io.BytesIO(store.originals[uids[2]])).pixel_array  # pydicom: YBR -> RGB
    assert np.abs(png - expected.astype(int)).max() <= 1

    mask = pydicom.dcmread(io.BytesIO(ct(92, rows=8, columns=8)))
    mask.StudyInstanceUID, mask.SeriesInstanceUID = uids[0], uids[1]
    mask.BitsAllocated, mask.BitsStored, mask.HighBit = 1, 1, 0
    bits = (np.arange(64).reshape(8, 8) % 3 == 0).astype(np.uint8)
    mask.PixelData = np.packbits(bits.ravel(), bitorder="little").tobytes()
    for keyword in ("RescaleIntercept", "RescaleSlope", "WindowCenter", "WindowWidth"):
        delattr(mask, keyword)
    mask_uids = store.put(to_part10(mask))
    shown = image_of(store.site.client.get(store.url(mask_uids, "/rendered"), headers={"Accept": "image/png"}))
    assert np.array_equal(shown > 127, bits.astype(bool))
    study = store.site.client.get(f"/dicom-web/studies/{uids[0]}/rendered")
    assert study.status_code == 200 and study.data.count(b"Content-Type: image/jpeg") == 2
    assert study.data.rstrip().endswith(b"--")  # the whole answer, closing delimiter included


def test_an_enhanced_multi_frame_image_is_windowed_from_its_functional_groups(store):
    """Enhanced CT keeps Rescale and Window per frame (PS3.3 C.7.6.16); they were ignored and
    a window in HU was applied to raw stored values."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    ds = pydicom.dcmread(io.BytesIO(ct(93)))
    for keyword in ("RescaleIntercept", "RescaleSlope", "RescaleType", "WindowCenter", "WindowWidth"):
        delattr(ds, keyword)
    frames = np.random.default_rng(93).integers(0, 4096, size=(2, ds.Rows, ds.Columns), dtype=np.uint16)
    ds.NumberOfFrames, ds.PixelData = 2, frames.tobytes()
    transformation = Dataset()
    transformation.RescaleIntercept, transformation.RescaleSlope, transformation.RescaleType = -1024, 1, "HU"
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transformation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for center, width in ((40, 400), (500, 2000)):
        voi, item = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, width
        item.FrameVOILUTSequence = Sequence([voi])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    uids = store.put(to_part10(ds))
    for number, (center, width) in ((1, (40, 400)), (2, (500, 2000))):
        got = image_of(store.site.client.get(store.url(uids, f"/frames/{number}/rendered"),
                                             headers={"Accept": "image/png"}))
        expected = linear(frames[number - 1] * 1.0 - 1024, center, width)
        assert np.abs(got - expected).max() <= 1, number


def test_a_viewport_far_larger_than_the_image_enlarges_it_at_most_four_times(store):
    uids = store.put(ct(94, rows=48, columns=40))
    response = store.site.client.get(store.url(uids, "/rendered"), query_string={"viewport": "4096,4096"},
                                     headers={"Accept": "image/png"})
    assert image_of(response).shape == (192, 160)
