"""What makes a pynetdicom acceptor answer in a millisecond rather than in tens of them.

Measured with dcmtk's ``storescu`` sending 500 small instances (12 KB) on one association
over loopback (2 cores), first to a pynetdicom 3.0.4 SCP whose handler does nothing:

* as it comes: 11 instances/s; with TCP_NODELAY on our socket: 22/s. Each request's last
  segment waits for our delayed ACK (40 ms on Linux): dcmtk keeps Nagle's algorithm on
  unless its user sets TCP_NODELAY=1 in its environment, and it writes a PDU in more than
  one piece. This is the "~20 files/s" of pynetdicom issue #917 (1 MB files, about one
  delayed ACK each). Re-arming TCP_QUICKACK after every read (Linux clears it on its own)
  makes us acknowledge at once: 306/s with an unmodified storescu.
* the DUL reactor sleeps ``_run_loop_delay`` (1 ms) whenever it found nothing to do, both
  before reading a request and before sending our response (issues #650, #120): 600/s with
  a short sleep while the association is busy. On the whole listener 50-500 µs are alike,
  1 ms costs a quarter and 20 µs a sixth (the spinning DUL thread competes for the GIL);
  an idle association goes back to 1 ms after ``IDLE_AFTER`` seconds, as pynetdicom's own.

Then on the whole listener (checks, durable inbox, group commits), from 250/s:

* pynetdicom builds each C-STORE response as a pydicom Dataset and encodes it with pydicom's
  writer, a quarter of the listener's CPU per small instance: ``answer_stores_directly``
  encodes those seven elements by hand (the same bytes; tests/dimse compares them): 290/s.
* the association's reactor sleeps 1 ms before each look for a complete message (a fixed
  ``time.sleep``): ``serve_ahead`` makes that look wait on the message queue instead and
  serve each request that follows at once, going back to the reactor only when its queue
  is empty or the peer asked for a release or abort: 330/s.

Only attributes of one association's own objects are touched (its socket wrapper's ``recv``,
its DUL's delay, its DIMSE provider's ``get_msg`` and ``send_msg``); if a pynetdicom release
renames what this relies on (``RELIED_ON``), ``tune`` logs once and leaves the association as
pynetdicom made it: slower, never broken.
"""
from __future__ import annotations

import logging
import queue
import socket
import struct
import threading
import time
import weakref

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

log = logging.getLogger("fhirimg.dimse")

BUSY_DELAY = 0.0001
AHEAD_WAIT = 0.02  # how long the acceptor's look for a message waits (release/abort checks wait as long)
IDLE_DELAY = 0.001  # pynetdicom's own
IDLE_AFTER = 0.2
QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux only
RELIED_ON = (("dul", "_run_loop_delay"), ("dul", "to_user_queue"), ("dul", "send_pdu"), ("dimse", "msg_queue"),
             ("dimse", "maximum_pdu_size"), ("assoc", "_serve_request"))  # pynetdicom 3.0's internals used here


class Pacer:
    """Keeps busy associations' DUL loops fast and lets idle ones sleep like pynetdicom's."""

    def __init__(self, interval: float = IDLE_AFTER):
        self.interval = interval
        self.active: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # DUL -> last read (monotonic)
        self.stopped = threading.Event()
        self.warned = False
        self.thread = threading.Thread(target=self._run, name="dimse-pacer", daemon=True)
        self.thread.start()

    def tune(self, assoc) -> None:
        """Before the association starts: TCP_NODELAY, QUICKACK after each read, fast DUL while
        busy, direct C-STORE responses, serving ahead."""
        try:
            wrapper, dul, dimse = assoc.dul.socket, assoc.dul, assoc.dimse
            sock = wrapper.socket
            for obj, name in RELIED_ON:
                getattr({"assoc": assoc, "dul": dul, "dimse": dimse}[obj], name)
        except AttributeError as exc:
            if not self.warned:
                self.warned = True
                log.warning("dimse: this pynetdicom differs from 3.0 (%s); associations keep its own pacing", exc)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapper.recv = self._reading(wrapper.recv, sock, dul)
        answer_stores_directly(assoc)
        serve_ahead(assoc)
        self.active[dul] = time.monotonic()
        dul._run_loop_delay = BUSY_DELAY

    def _reading(self, recv, sock, dul):
        active = self.active

        def recv_and_ack(nr_bytes: int):
            data = recv(nr_bytes)
            if QUICKACK is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)
                except OSError:
                    pass  # the peer is gone; the DUL finds out on its own
            if dul._run_loop_delay != BUSY_DELAY:
                dul._run_loop_delay = BUSY_DELAY
            active[dul] = time.monotonic()
            return data

        return recv_and_ack

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            cutoff = time.monotonic() - IDLE_AFTER
            for dul, last in list(self.active.items()):
                if last < cutoff and dul._run_loop_delay == BUSY_DELAY:
                    dul._run_loop_delay = IDLE_DELAY

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


def serve_ahead(assoc) -> None:
    """Replace the acceptor reactor's non-blocking look for a message (see the module docstring)."""
    dimse, get_msg, serve = assoc.dimse, assoc.dimse.get_msg, assoc._serve_request
    pending = assoc.dul.to_user_queue  # where an A-RELEASE or A-ABORT from the peer lands

    def get_or_serve(block: bool = False):
        if block:  # a send_*() of ours waiting for its response: pynetdicom's own
            return get_msg(block=True)
        while True:
            try:
                context_id, message = dimse.msg_queue.get(timeout=AHEAD_WAIT)
            except queue.Empty:
                return None, None  # the reactor's turn: release, abort, timeouts
            if message is None:  # put there to wake a blocked reader: the association ends
                return None, None
            serve(message, context_id)
            if pending.queue or not assoc.is_established:
                return None, None

    dimse.get_msg = get_or_serve


def answer_stores_directly(assoc) -> None:
    """Send C-STORE responses without pynetdicom's Dataset round trip; anything else as before."""
    dimse = assoc.dimse
    send_msg = dimse.send_msg

    def send(primitive, context_id: int) -> None:
        if not is_plain_store_response(primitive):
            send_msg(primitive, context_id)
            return
        command = store_response_command(str(primitive.AffectedSOPClassUID), str(primitive.AffectedSOPInstanceUID),
                                         primitive.MessageIDBeingRespondedTo, primitive.Status)
        limit = dimse.maximum_pdu_size
        if limit and len(command) + 7 > limit:  # a peer with a tiny PDU: pynetdicom fragments it
            send_msg(primitive, context_id)
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list = [[context_id, b"\x03" + command]]  # command, last fragment
        dimse.dul.send_pdu(pdata)

    dimse.send_msg = send


def is_plain_store_response(primitive) -> bool:
    return (isinstance(primitive, C_STORE) and primitive.MessageIDBeingRespondedTo is not None
            and primitive.Status is not None and primitive.ErrorComment is None
            and primitive.OffendingElement is None and primitive.AffectedSOPClassUID is not None
            and primitive.AffectedSOPInstanceUID is not None)


def store_response_command(sop_class_uid: str, sop_uid: str, message_id: int, status: int) -> bytes:
    """The command set of a C-STORE-RSP (PS3.7 9.3.1.2), Implicit VR Little Endian (PS3.7 6.3.1)."""
    body = (uid_element(0x0002, sop_class_uid) + us_element(0x0100, 0x8001) + us_element(0x0120, message_id)
            + us_element(0x0800, 0x0101) + us_element(0x0900, status) + uid_element(0x1000, sop_uid))
    return struct.pack("<HHII", 0x0000, 0x0000, 4, len(body)) + body


def us_element(element: int, value: int) -> bytes:
    return struct.pack("<HHIH", 0x0000, element, 2, value)


def uid_element(element: int, uid: str) -> bytes:
    data = uid.encode("ascii")
    if len(data) % 2:
        data += b"\x00"
    return struct.pack("<HHI", 0x0000, element, len(data)) + data
