"""What arrives on an association we opened: every data set bounded, C-STORE data sets on disk.

pynetdicom gathers each DIMSE message (PS3.7 §6.3.1, sent as P-DATA fragments, PS3.8 Annex E)
in a BytesIO until it is complete, so a C-STORE of a 2 GB instance would be 2 GB of worker
memory, and a peer could send any data set of any size. Its own chunked mode
(``_config.STORE_RECV_CHUNKED_DATASET``) is process-wide and writes to the system temporary
directory with no limit. So ``IncomingMessages`` takes the place of the association's
``dimse.receive_primitive`` before the association is requested and sees each fragment first:

* the data set of a C-STORE request (what C-GET brings back, PS3.4 C.4.3.1) goes fragment by
  fragment to a file of the store target's choosing, behind a Part-10 header (PS3.10 §7.1),
  is metered (the Task's byte budget, throughput floor, cancel and deadline) and cut at the
  instance's allowance; pynetdicom gets the message with an empty data set;
* any other data set (a C-FIND identifier, a response's identifier) is left to pynetdicom
  but may bring at most ``MAX_MESSAGE_BYTES``, and all of them on one association at most
  ``MAX_ASSOCIATION_BYTES`` (the bounds of one QIDO search);
* a command set may bring at most ``MAX_COMMAND_BYTES``.

This runs in pynetdicom's DUL thread, which must not die: an error is handed to
``on_error`` (the session aborts the association from another thread) and everything that
arrives after it is dropped.
"""
from __future__ import annotations

import io
import os
import threading
from typing import Callable, Protocol

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.pdu_primitives import P_DATA

MAX_COMMAND_BYTES = 64 << 10
MAX_MESSAGE_BYTES = 4 << 20
MAX_ASSOCIATION_BYTES = 32 << 20
LAST_FRAGMENT = 0x02
COMMAND = 0x01


class ProtocolLimit(Exception):
    """The peer sent more than an association may bring outside pixel data."""


class InstanceTooLarge(Exception):
    """A C-STORE data set passed its allowance: it is cut and not asked for again."""

    def __init__(self, sop_uid: str, allowance: int):
        super().__init__(f"instance {sop_uid} passed its allowance of {allowance} bytes")
        self.sop_uid, self.allowance = sop_uid, allowance


class IncomingInstance(Protocol):
    sop_uid: str

    def write(self, data: memoryview) -> None:
        """Append a fragment; may raise InstanceTooLarge."""

    def discard(self) -> None:
        """Remove what was written (a cut, refused or unwanted instance)."""


class StoreTarget(Protocol):
    def begin(self, sop_class_uid: str, sop_uid: str, header: bytes) -> IncomingInstance:
        """A new C-STORE data set starts (DUL thread); ``header`` is its Part-10 header."""


def part10_header(sop_class_uid: str, sop_uid: str, transfer_syntax: str, sending_ae: str) -> bytes:
    """Preamble, ``DICM`` and a file meta group for a data set received over the network.

    The data set bytes stay exactly as sent; only this header is ours (pynetdicom's
    implementation UID, the peer as Source Application Entity Title).
    """
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYNETDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = PYNETDICOM_IMPLEMENTATION_VERSION
    if sending_ae:
        meta.SourceApplicationEntityTitle = sending_ae
    out = io.BytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    return out.getvalue()


class DroppedInstance:
    """Where the data set of a C-STORE goes when it cannot be kept (no target, unknown context)."""

    def __init__(self, sop_uid: str):
        self.sop_uid = sop_uid

    def write(self, data: memoryview) -> None:
        pass

    def discard(self) -> None:
        pass


class IncomingMessages:
    """Replaces ``assoc.dimse.receive_primitive``: see the module docstring."""

    def __init__(self, assoc, target: StoreTarget | None, meter: Callable[[int], None],
                 on_error: Callable[[BaseException], None], sending_ae: str = ""):
        self.assoc, self.target, self.meter, self.on_error = assoc, target, meter, on_error
        self.sending_ae = sending_ae
        self.deliver = assoc.dimse.receive_primitive
        self.current: IncomingInstance | None = None
        self.completed: dict[int, IncomingInstance] = {}
        self.lock = threading.Lock()
        self.command_bytes = self.message_bytes = self.association_bytes = 0
        self.failed = False
        self.syntaxes: dict[int, str] | None = None

    def install(self) -> None:
        self.assoc.dimse.receive_primitive = self.receive

    def receive(self, primitive) -> None:
        if self.failed:
            return  # the association is being aborted: nothing more is kept
        try:
            for context_id, data in primitive.presentation_data_value_list:
                self.receive_value(context_id, data)
        except BaseException as exc:  # noqa: BLE001 - the DUL thread must survive to be aborted
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        self.failed = True
        if self.current is not None:
            self.current.discard()
            self.current = None
        self.on_error(exc)

    def receive_value(self, context_id: int, data: bytes) -> None:
        header = data[0]
        if header & COMMAND:
            self.receive_command(context_id, data)
            return
        message = self.assoc.dimse.message
        if isinstance(message, C_STORE_RQ):
            self.receive_store_data(context_id, data, message)
            return
        self.message_bytes += len(data) - 1
        self.association_bytes += len(data) - 1
        if self.message_bytes > MAX_MESSAGE_BYTES:
            raise ProtocolLimit(f"a DIMSE data set of more than {MAX_MESSAGE_BYTES} bytes")
        if self.association_bytes > MAX_ASSOCIATION_BYTES:
            raise ProtocolLimit(f"more than {MAX_ASSOCIATION_BYTES} bytes of query results on one association")
        self.pass_on(context_id, data)
        if header_is_last(data):
            self.message_bytes = 0

    def receive_command(self, context_id: int, data: bytes) -> None:
        self.command_bytes += len(data) - 1
        if self.command_bytes > MAX_COMMAND_BYTES:
            raise ProtocolLimit(f"a DIMSE command set of more than {MAX_COMMAND_BYTES} bytes")
        self.pass_on(context_id, data)
        message = self.assoc.dimse.message
        if message is not None and header_is_last(data):
            self.command_bytes = 0
            close_chunked_file(message)  # in case someone switched pynetdicom's chunked mode on
        if message is None:  # complete without a data set
            self.message_bytes = 0

    def receive_store_data(self, context_id: int, data: bytes, message) -> None:
        """A fragment of a C-STORE data set: to the instance's file, never to memory."""
        if self.current is None:
            self.current = self.begin(context_id, message)
        size = len(data) - 1
        self.meter(size)
        self.current.write(memoryview(data)[1:])
        if header_is_last(data):
            with self.lock:
                self.completed[int(message.command_set.MessageID)] = self.current
            self.current = None
            self.message_bytes = 0
            self.pass_on(context_id, bytes([LAST_FRAGMENT]))  # completes the message, data set empty

    def begin(self, context_id: int, message) -> IncomingInstance:
        command = message.command_set
        sop_class, sop_uid = str(command.AffectedSOPClassUID or ""), str(command.AffectedSOPInstanceUID or "")
        syntax = self.transfer_syntax(context_id)
        if self.target is None or syntax is None or not sop_class or not sop_uid:
            return DroppedInstance(sop_uid)  # pynetdicom answers it (no context: 0x0122)
        return self.target.begin(sop_class, sop_uid, part10_header(sop_class, sop_uid, syntax, self.sending_ae))

    def transfer_syntax(self, context_id: int) -> str | None:
        if self.syntaxes is None:
            self.syntaxes = {cx.context_id: str(cx.transfer_syntax[0]) for cx in self.assoc.accepted_contexts}
        return self.syntaxes.get(context_id)

    def pass_on(self, context_id: int, data: bytes) -> None:
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[context_id, bytes(data)]]
        self.deliver(primitive)

    def take(self, message_id: int) -> IncomingInstance | None:
        """The data set of a completed C-STORE request (called by the store handler)."""
        with self.lock:
            return self.completed.pop(int(message_id), None)

    def discard_all(self) -> None:
        """At the end of the association: nothing received may stay in staging."""
        with self.lock:
            left, self.completed = list(self.completed.values()), {}
        current, self.current = self.current, None
        for instance in left + ([current] if current is not None else []):
            instance.discard()


def header_is_last(data: bytes) -> bool:
    return bool(data[0] & LAST_FRAGMENT)


def close_chunked_file(message) -> None:
    """pynetdicom's chunked mode opens a temporary file per C-STORE; ours is used instead."""
    handle = getattr(message, "_data_set_file", None)
    if handle is None:
        return
    path = getattr(message, "_data_set_path", None)
    handle.close()
    message._data_set_file = None
    message._data_set_path = None
    if path is not None:
        os.unlink(path)
