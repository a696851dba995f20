"""Rendered images and thumbnails (PS3.18 8.3.5, 10.4.1.1.3): a frame made presentable.

The pipeline is the one of PS3.3 C.11 / PS3.14, in order: the Modality LUT (Rescale Slope
and Intercept), the VOI LUT (the request's ``window``, else the instance's first Window
Center/Width, else the frame's full range: Orthanc does the same), MONOCHROME1 inverted,
then the region and size of ``viewport``, then JPEG (default), PNG or GIF through Pillow.
Colour images (RGB, or YBR decoded to RGB) are not windowed; palette colour goes through
its LUT. Every size is bounded: an output is at most MAX_SIDE pixels a side.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pydicom

from fhirimg.errors import FhirError, NotAcceptable

from .negotiate import parse_accept

MAX_SIDE = 4096
MAX_ENLARGEMENT = 4.0  # a viewport larger than this many times the image gets this: no more work
THUMBNAIL_SIDE = 128
MEDIA = {"image/jpeg": "JPEG", "image/png": "PNG", "image/gif": "GIF"}
FUNCTIONS = ("linear", "linear-exact", "sigmoid")
LUT_LIMIT = 1 << 17  # value ranges up to this use a lookup table (16-bit images always do)


@dataclass
class Window:
    center: float
    width: float
    function: str = "linear"


@dataclass
class Viewport:
    width: int
    height: int
    region: tuple[int, int, int, int] | None = None  # sx, sy, sw, sh (negative: flipped)


@dataclass
class Rendering:
    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90


def parse_rendering(args, accept: str, thumbnail: bool = False) -> Rendering:
    """The query parameters and Accept header of a rendered or thumbnail request; a value
    that is not understood is a 400 naming the parameter (never silently ignored)."""
    rendering = Rendering(media_type=rendered_media_type(accept))
    for key, value in args.items(multi=True):
        if key == "window" and not thumbnail:
            rendering.window = parse_window(value)
        elif key == "viewport":
            rendering.viewport = parse_viewport(value)
        elif key == "quality" and not thumbnail:
            rendering.quality = parse_number(key, value, 1, 100)
        elif key in ("charset", "iccprofile") and value in ("", "utf-8", "no"):
            continue  # the defaults: nothing is burnt in, no ICC profile embedded
        elif key == "annotation":
            raise FhirError(400, "not-supported", "annotation (burnt-in text) is not offered: rendered images "
                                                  "carry no patient data by design", ["annotation"])
        else:
            raise FhirError(400, "invalid", f"{key}={value[:60]!r} is not a parameter of this rendered "
                                            "resource (window, viewport, quality)", [key])
    if thumbnail and rendering.viewport is None:
        rendering.viewport = Viewport(THUMBNAIL_SIDE, THUMBNAIL_SIDE)
    return rendering


def rendered_media_type(accept: str) -> str:
    for media in parse_accept(accept) or []:
        if media.type in MEDIA:
            return media.type
        if media.type in ("*/*", "image/*"):
            return "image/jpeg"
        if media.type == "multipart/related" and media.params.get("type") in MEDIA:
            return media.params["type"]
    if not parse_accept(accept):
        return "image/jpeg"
    raise NotAcceptable(f"cannot answer {accept!r}: rendered images are served as "
                        f"{', '.join(MEDIA)}")


def parse_number(key: str, text: str, low: float, high: float, integer: bool = True):
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise FhirError(400, "invalid", f"{key}: {text[:40]!r} is not a number", [key]) from None
    if not low <= value <= high or value != value:
        raise FhirError(400, "invalid", f"{key}: {text[:40]!r} must be from {low} to {high}", [key])
    return value


def parse_window(text: str) -> Window:
    """``center,width,function`` (PS3.18 8.3.5.1.4); the function is optional (linear)."""
    parts = text.split(",")
    if len(parts) not in (2, 3):
        raise FhirError(400, "invalid", "window must be center,width[,function]", ["window"])
    center = parse_number("window", parts[0], -1e9, 1e9, integer=False)
    width = parse_number("window", parts[1], 1, 1e9, integer=False)
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if function not in FUNCTIONS:
        raise FhirError(400, "invalid", f"window function {function[:20]!r} is not one of {', '.join(FUNCTIONS)}",
                        ["window"])
    return Window(center, width, function)


def parse_viewport(text: str) -> Viewport:
    """``vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (PS3.18 8.3.5.1.3)."""
    parts = text.split(",")
    if len(parts) not in (2, 6):
        raise FhirError(400, "invalid", "viewport must be vw,vh or vw,vh,sx,sy,sw,sh", ["viewport"])
    width, height = (parse_number("viewport", p, 1, MAX_SIDE) for p in parts[:2])
    region = None
    if len(parts) == 6:
        sx, sy = (parse_number("viewport", p, 0, 1 << 16) for p in parts[2:4])
        sw, sh = (parse_number("viewport", p, -(1 << 16), 1 << 16) for p in parts[4:])
        if sw == 0 or sh == 0:
            raise FhirError(400, "invalid", "viewport: the source region is empty", ["viewport"])
        region = (sx, sy, sw, sh)
    return Viewport(width, height, region)


def render(header, array: np.ndarray, rendering: Rendering, frame: int = 1) -> bytes:
    """A decoded frame as the image `rendering` asks for; `header` answers ``get(keyword)``
    (a pydicom Dataset, or the index's attributes through ``JsonHeader``)."""
    from PIL import Image
    pixels = presentable(header, array, rendering.window, frame)
    image = Image.fromarray(pixels)
    image = fit(crop(image, rendering.viewport), rendering.viewport)
    out = io.BytesIO()
    kind = MEDIA[rendering.media_type]
    if kind == "JPEG":
        image.save(out, "JPEG", quality=rendering.quality)
    else:
        image.save(out, kind)
    return out.getvalue()


class JsonHeader:
    """An instance's stored DICOM JSON answering ``get(keyword, default)`` like a Dataset, for
    the attributes rendering reads: an uncompressed frame is rendered without parsing the file."""

    def __init__(self, attributes: dict):
        self.attributes = attributes

    def get(self, keyword: str, default=None):
        from pydicom.datadict import tag_for_keyword
        values = (self.attributes.get(f"{tag_for_keyword(keyword):08X}") or {}).get("Value")
        if not values:
            return default
        values = [JsonHeader(v) if isinstance(v, dict) and "Alphabetic" not in v else v for v in values]
        return values[0] if len(values) == 1 else list(values)


def items_of(value) -> list:
    """A sequence's items, whether a Dataset's Sequence, a list or one JsonHeader item."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple, pydicom.sequence.Sequence)) else [value]


# Where an enhanced (multi-frame) object keeps what older objects keep at the top level
# (PS3.3 C.7.6.16): Pixel Value Transformation and Frame VOI LUT macros, per frame or shared.
MACROS = {"RescaleSlope": "PixelValueTransformationSequence", "RescaleIntercept": "PixelValueTransformationSequence",
          "WindowCenter": "FrameVOILUTSequence", "WindowWidth": "FrameVOILUTSequence",
          "VOILUTFunction": "FrameVOILUTSequence"}


def frame_value(header, keyword: str, frame: int, default=None):
    """`keyword` at the top level, else in frame `frame`'s functional groups (its own first,
    then the shared ones)."""
    value = header.get(keyword)
    if value is not None or keyword not in MACROS:
        return default if value is None else value
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame - 1), ("SharedFunctionalGroupsSequence", 0)):
        items = items_of(header.get(groups))
        if index < len(items):
            for macro in items_of(items[index].get(MACROS[keyword])):
                found = macro.get(keyword)
                if found is not None:
                    return found
    return default


def presentable(ds, array: np.ndarray, window: Window | None, frame: int = 1) -> np.ndarray:
    """8-bit grey or RGB values of a decoded frame."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if array.ndim == 3:  # colour, already RGB (YBR converted, palettes applied)
        bits = 8 if array.dtype == np.uint8 else 16 if photometric == "PALETTE COLOR" else int(ds.get("BitsStored", 8))
        return to_8_bit(array, bits)
    slope = float(frame_value(ds, "RescaleSlope", frame, 1) or 1)
    intercept = float(frame_value(ds, "RescaleIntercept", frame, 0) or 0)
    window = window or stored_window(ds, frame)
    low, high = int(array.min()), int(array.max())
    if np.issubdtype(array.dtype, np.integer) and high - low < LUT_LIMIT:
        # A lookup table over the values present: the window is computed once per value,
        # not once per pixel (a 512x512 CT: 1.8 ms -> 0.3 ms).
        values = np.arange(low, high + 1, dtype=np.float64) * slope + intercept
        lut = grey_levels(values, window or full_range(values), photometric)
        return lut[array.astype(np.int64) - low if low < 0 or array.dtype.kind == "i" else array - array.dtype.type(low)]
    values = array.astype(np.float64) * slope + intercept
    return grey_levels(values, window or full_range(values), photometric)


def grey_levels(values: np.ndarray, window: Window, photometric: str) -> np.ndarray:
    grey = apply_window(values, window)
    if photometric == "MONOCHROME1":
        grey = 255.0 - grey
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def to_8_bit(array: np.ndarray, bits: int) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    return np.clip(np.rint(array.astype(np.float64) * 255.0 / ((1 << bits) - 1)), 0, 255).astype(np.uint8)


def stored_window(ds, frame: int = 1) -> Window | None:
    center, width = frame_value(ds, "WindowCenter", frame), frame_value(ds, "WindowWidth", frame)
    if center is None or width is None:
        return None
    center = center[0] if isinstance(center, (list, pydicom.multival.MultiValue)) else center
    width = width[0] if isinstance(width, (list, pydicom.multival.MultiValue)) else width
    function = str(frame_value(ds, "VOILUTFunction", frame, "LINEAR")).lower().replace("_", "-")
    try:
        return Window(float(center), float(width), function if function in FUNCTIONS else "linear") \
            if float(width) >= 1 else None
    except (TypeError, ValueError):
        return None


def full_range(values: np.ndarray) -> Window:
    low, high = float(values.min()), float(values.max())
    return Window((low + high) / 2, max(high - low, 1.0), "linear-exact")


def apply_window(x: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2, output range 0..255."""
    c, w = window.center, window.width
    if window.function == "sigmoid":
        return 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function == "linear-exact":
        return np.clip(((x - c) / w + 0.5) * 255.0, 0, 255)
    if w <= 1:
        return np.where(x <= c - 0.5, 0.0, 255.0)
    return np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0, 0, 255)


def crop(image, viewport: Viewport | None):
    """The source region sx,sy,sw,sh of the viewport; a negative size flips that axis."""
    from PIL import Image
    if viewport is None or viewport.region is None:
        return image
    sx, sy, sw, sh = viewport.region
    left, right = sorted((sx, sx + sw))
    top, bottom = sorted((sy, sy + sh))
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(right, image.width), min(bottom, image.height)
    if right <= left or bottom <= top:
        raise FhirError(400, "invalid", f"viewport: the source region lies outside the {image.width}x"
                                        f"{image.height} image", ["viewport"])
    image = image.crop((left, top, right, bottom))
    if sw < 0:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image


def fit(image, viewport: Viewport | None):
    """Scaled to fit within vw x vh, keeping the aspect ratio (never above MAX_SIDE, nor
    enlarged more than MAX_ENLARGEMENT times: a 512x512 CT made 4096x4096 took 2.2 s)."""
    from PIL import Image
    width, height = (viewport.width, viewport.height) if viewport else (image.width, image.height)
    scale = min(width / image.width, height / image.height, MAX_SIDE / image.width, MAX_SIDE / image.height,
                MAX_ENLARGEMENT)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.BILINEAR)


def representative(instances: list, level: str):
    """The instance a thumbnail of a study or series shows: the middle one of the first
    series that holds images (what a radiologist's worklist shows)."""
    images = [i for i in instances if "00280010" in i.attributes]
    if not images:
        raise FhirError(404, "not-found", f"this {level} holds no image to make a thumbnail of")
    first_series = [i for i in images if i.series_uid == images[0].series_uid]
    return first_series[len(first_series) // 2]
