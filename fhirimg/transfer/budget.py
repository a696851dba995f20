"""How many bytes a source may make one Task write: per part, per instance, per Task.

The WADO-RS metadata of an instance (step 2) announces its pixel geometry, hence the size
of its pixel data (PS3.3 C.7.6.3: Rows x Columns x Samples per Pixel x Bits Allocated x
Number of Frames). A part may be somewhat larger (its header, a codec that expands noise)
but never without bound: it is cut at ``part_allowance`` and rejected at once. An instance
whose metadata announces no pixel data (a report, a PDF), or has not arrived yet, may take
up to ``max_instance_bytes`` (default 4 GiB) in all its attempts. The Task as a whole may
receive ``TASK_FACTOR`` times what its instances announce plus ``TASK_SLACK``, at most
``max_task_bytes``: twice lets a series that broke off be fetched again instance by
instance; more than that is a source sending what nobody asked for.

Issue 15, item 9: an endless part made the worker write 10 x 2 GiB of staging for one Task
in 40 s.
"""
from __future__ import annotations

import threading

TAG_SAMPLES_PER_PIXEL = "00280002"
TAG_NUMBER_OF_FRAMES = "00280008"
TAG_ROWS = "00280010"
TAG_COLUMNS = "00280011"
TAG_BITS_ALLOCATED = "00280100"

FRAME_HEADER_BYTES = 16 * 1024  # per-frame functional groups of an enhanced multi-frame header
PART_HEADER_BYTES = 8 << 20  # the rest of a part beside its pixel data (header, overlays, private data)
TASK_FACTOR = 2
TASK_SLACK = 1 << 30


def announced_size(dataset: dict) -> int | None:
    """The size an instance's DICOM JSON metadata announces: its pixel data uncompressed plus
    its per-frame headers; None when it announces no pixel data."""
    rows, columns, bits = (_number(dataset, tag) for tag in (TAG_ROWS, TAG_COLUMNS, TAG_BITS_ALLOCATED))
    if not (rows and columns and bits):
        return None
    samples = _number(dataset, TAG_SAMPLES_PER_PIXEL) or 3  # absent: assume colour, the larger
    frames = _number(dataset, TAG_NUMBER_OF_FRAMES) or 1
    return (rows * columns * samples * bits * frames + 7) // 8 + frames * FRAME_HEADER_BYTES


def part_allowance(announced: int | None, max_instance_bytes: int) -> int:
    """The most one part of this instance may bring before it is cut and rejected."""
    if announced is None:
        return max_instance_bytes
    return min(max_instance_bytes, announced * 3 // 2 + PART_HEADER_BYTES)


def _number(dataset: dict, tag: str) -> int | None:
    """A positive integer value (US or IS) of a DICOM JSON attribute, or None."""
    element = dataset.get(tag) if isinstance(dataset, dict) else None
    values = element.get("Value") if isinstance(element, dict) else None
    if not isinstance(values, list) or not values:
        return None
    try:
        number = int(values[0])
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 1 << 32 else None


class ByteBudget:
    """The bytes one Task run may receive as pixel data; thread-safe.

    Instances are announced as steps 1 and 2 find them: listed first (size unknown, counted
    as ``max_instance_bytes``), then with the size their metadata gives. The limit follows.
    """

    def __init__(self, max_instance_bytes: int, max_task_bytes: int):
        self.max_instance_bytes, self.max_task_bytes = max_instance_bytes, max_task_bytes
        self.sizes: dict[str, int] = {}
        self.announced = 0
        self.spent = 0
        self.lock = threading.Lock()

    def announce(self, sop_uid: str, size: int | None) -> None:
        """Count an instance with the size announced for it (None: unknown)."""
        size = self.max_instance_bytes if size is None else min(size, self.max_instance_bytes)
        with self.lock:
            self.announced += size - self.sizes.get(sop_uid, 0)
            self.sizes[sop_uid] = size

    def limit(self) -> int:
        return min(self.max_task_bytes, TASK_FACTOR * self.announced + TASK_SLACK)

    def charge(self, size: int) -> bool:
        """Count received bytes; False once more than the limit has come."""
        with self.lock:
            self.spent += size
            return self.spent <= self.limit()
