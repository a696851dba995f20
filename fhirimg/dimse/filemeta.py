"""The Part-10 header (PS3.10 §7.1) written before a received data set, encoded by hand.

The same bytes as ``incoming.part10_header`` (pydicom's ``write_file_meta_info``; the tests
compare them), in ~10 µs instead of ~300 µs: that header is written once per C-STORE, and
on a stream of small instances pydicom's writer was an eighth of the listener's CPU.
File meta elements are always Explicit VR Little Endian (PS3.10 §7.1); UIs are padded with
NUL, SH and AE with a space, to an even length (PS3.5 §6.2).
"""
from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

PREFIX = b"\x00" * 128 + b"DICM"
VERSION = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"


def short_element(element: int, vr: bytes, value: str, pad: bytes) -> bytes:
    data = value.encode("ascii")
    if len(data) % 2:
        data += pad
    return struct.pack("<HH2sH", 0x0002, element, vr, len(data)) + data


def part10_header(sop_class_uid: str, sop_uid: str, transfer_syntax: str, sending_ae: str) -> bytes:
    """Preamble, ``DICM`` and the file meta group of a data set received over the network."""
    elements = [VERSION,
                short_element(0x0002, b"UI", sop_class_uid, b"\x00"),
                short_element(0x0003, b"UI", sop_uid, b"\x00"),
                short_element(0x0010, b"UI", transfer_syntax, b"\x00"),
                short_element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID, b"\x00"),
                short_element(0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION, b" ")]
    if sending_ae:
        elements.append(short_element(0x0016, b"AE", sending_ae, b" "))
    body = b"".join(elements)
    return PREFIX + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(body)) + body
