"""fhirimg's DICOM node as an acceptor: C-ECHO and C-STORE (PS3.4 Annexes A and B).

A pynetdicom ``AE`` serves Verification and every storage SOP class pynetdicom knows, each
in every transfer syntax it names (we store what we receive, never transcode). One thread
per association (pynetdicom's), at most ``[dicom] max_associations`` at once; the ACSE, DIMSE
and network timeouts end a slow or abandoned association, and what it left half received
is removed with it. An association is accepted only from a node on the allow-list
(callers.py) calling our AE title; a rejection is audited.

What arrives: incoming.IncomingMessages puts each C-STORE data set into a staging file as it
arrives (cstore.py); the answer comes once the instance is checked and durable in the inbox
(inbox.py), whose committer stores instances in groups through the same ingest as STOW-RS.
latency.py removes pynetdicom's per-message stalls.
"""
from __future__ import annotations

import logging
import signal
import threading
import time

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.sop_class import Verification

from ..push.ingest import Ingest
from .callers import CallerList
from .cstore import ListenerMessages, StagingTarget, StoreService
from .inbox import Inbox
from .incoming import IncomingMessages
from .latency import Pacer
from .refusals import actor_of, association_rejected, instance_refused
from .settings import dicom_section

log = logging.getLogger("fhirimg.dimse")

SHUTDOWN_GRACE = 30.0  # seconds in-flight associations get to finish on SIGTERM
STANDARD_LOG_HANDLERS = ((evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
                         (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
                         (evt.EVT_PDU_RECV, standard_pdu_recv_handler), (evt.EVT_PDU_SENT, standard_pdu_sent_handler))


def build_ae(section: dict) -> AE:
    """Our AE with the ``[dicom]`` limits; every storage class in every transfer syntax."""
    ae = AE(ae_title=section["ae_title"])
    ae.maximum_associations = section["max_associations"]
    ae.acse_timeout = section["acse_timeout"]
    ae.dimse_timeout = section["dimse_timeout"]
    ae.network_timeout = section["network_timeout"]
    ae.maximum_pdu_size = section["max_pdu"]
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    return ae


class Listener:
    """The C-STORE SCP: ``start`` (returns the bound address), ``stop`` (graceful)."""

    def __init__(self, config: dict, ingest: Ingest | None = None, engine=None):
        self.section = dicom_section(config)
        self.callers = CallerList(self.section)
        self.ingest = ingest or Ingest.from_config(config, engine, role="fhirimg-dimse")
        self.inbox = Inbox(self.ingest, self.stored_refusal)
        self.service = StoreService(self.ingest, self.inbox)
        self.target = StagingTarget(self.ingest)
        self.pacer: Pacer | None = None
        self.server = None
        self.receiving: dict[object, IncomingMessages] = {}
        self.lock = threading.Lock()

    def start(self, host: str | None = None, port: int | None = None) -> tuple[str, int]:
        """Store what the last run acknowledged, then listen (the configured address by default)."""
        self.inbox.start()
        self.pacer = Pacer()
        self.watchdog = threading.Thread(target=self.watch_rates, name="dimse-rate-watch", daemon=True)
        self.watching = threading.Event()
        self.watchdog.start()
        ae = build_ae(self.section)
        address = (host or self.section["host"], self.section["port"] if port is None else port)
        try:
            self.server = ae.start_server(address, block=False, evt_handlers=self.handlers())
        except OSError:  # the port is taken: give the inbox back
            self.inbox.close()
            self.pacer.stop()
            self.watching.set()
            raise
        bound = self.server.server_address[:2]
        log.info("DICOM listener %s at %s:%s", self.section["ae_title"], *bound)
        return bound

    def watch_rates(self) -> None:
        """Abort associations whose PDU in progress arrives slower than [dicom] min_rate."""
        minimum, grace = self.section["min_rate"], self.section["min_rate_grace"]
        while minimum and not self.watching.wait(min(1.0, grace / 2)):
            with self.lock:
                receiving = list(self.receiving.items())
            now = time.monotonic()
            for assoc, incoming in receiving:
                slow = incoming.deadline.too_slow(now)
                if slow and not incoming.failed:
                    log.warning("DICOM association from %s aborted: %s", assoc.requestor.ae_title, slow)
                    incoming.fail(DataTooSlow(slow))

    def handlers(self) -> list:
        return [(evt.EVT_CONN_OPEN, self.on_connection), (evt.EVT_REQUESTED, self.on_association_request),
                (evt.EVT_C_ECHO, lambda event: 0x0000), (evt.EVT_C_STORE, self.on_store)]

    def stop(self, grace: float = SHUTDOWN_GRACE) -> None:
        """No new associations; those under way get ``grace`` seconds to end (each instance
        received is answered), then are aborted; the inbox stores what it holds."""
        if self.server is None:
            return
        server, self.server = self.server, None
        server.shutdown()
        deadline = time.monotonic() + grace
        while any(a.is_established for a in server.active_associations) and time.monotonic() < deadline:
            time.sleep(0.05)
        for assoc in server.active_associations:
            if assoc.is_established:
                log.warning("dimse: aborting the association from %s at shutdown", assoc.requestor.ae_title)
                assoc.abort()
            else:  # a connection that has not (or never) asked for an association: its DUL thread
                assoc.dul.kill_dul()  # would keep the process alive until the ACSE timeout
        self.inbox.close()
        if self.pacer is not None:
            self.pacer.stop()
            self.watching.set()

    # -- association events --------------------------------------------------------------------
    def on_connection(self, event) -> None:
        """Before the association's threads start: fast pacing, and our own receiving."""
        assoc = event.assoc
        self.pacer.tune(assoc)
        for event_type, handler in STANDARD_LOG_HANDLERS:  # bound by every Association: per-PDU debug logs
            assoc.unbind(event_type, handler)
        incoming = ListenerMessages(assoc, self.target, meter=lambda size: None,
                                    on_error=lambda exc: abort_later(assoc, exc))
        incoming.deadline = PduDeadline(self.section["min_rate"], self.section["min_rate_grace"])
        assoc.dul.socket.recv = incoming.deadline.wrap(assoc.dul.socket.recv)
        incoming.install()
        with self.lock:
            self.receiving[assoc] = incoming
        run = assoc.run

        def run_then_clean_up():
            try:
                run()
            finally:
                self.finished(assoc)
                self.service.release_connection()

        assoc.run = run_then_clean_up

    def finished(self, assoc) -> None:
        """However the association ended: nothing it left half received stays in staging."""
        assoc.dul.join(5.0)
        with self.lock:
            incoming = self.receiving.pop(assoc, None)
        if incoming is not None:
            incoming.discard_all()

    def on_association_request(self, event) -> None:
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling, called = str(request.calling_ae_title or ""), str(request.called_ae_title or "")
        address = assoc.requestor.address
        refusal = self.callers.refusal(calling, called, address)
        if refusal is None:
            with self.lock:
                incoming = self.receiving.get(assoc)
            if incoming is not None:
                incoming.sending_ae = calling.strip()  # the Source AE Title of the files' meta
            return
        association_rejected(self.ingest.repo.engine, actor_of(calling, self.ingest.repo.site, address),
                             refusal.reason)  # recorded before the peer is told
        assoc.acse.send_reject(refusal.result, refusal.source, refusal.diagnostic)
        assoc.kill()  # as pynetdicom's own rejections: waits until the reject is sent

    def on_store(self, event) -> int:
        assoc, request = event.assoc, event.request
        with self.lock:
            incoming = self.receiving.get(assoc)
        received = incoming.take(request.MessageID) if incoming is not None else None
        actor = actor_of(assoc.requestor.ae_title, self.ingest.repo.site, assoc.requestor.address)
        return self.service.answer(received, str(request.AffectedSOPClassUID or ""),
                                   str(request.AffectedSOPInstanceUID or ""), actor)

    def stored_refusal(self, actor, code: int, reason: str, record) -> None:
        """The inbox could not store an acknowledged instance: audited like any refusal."""
        instance_refused(self.ingest.repo.engine, actor, code, reason, record.sop_uid if record else "",
                         record.sop_class_uid if record else "")


class DataTooSlow(Exception):
    """A PDU arriving slower than [dicom] min_rate."""


class PduDeadline:
    """When the PDU being read must be complete: once its header has come, a PDU of n bytes
    has min_rate_grace + n / min_rate seconds (pynetdicom reads a PDU whole before handing it
    on, so a drip inside one PDU is only visible here, at the socket)."""

    def __init__(self, minimum: int, grace: float):
        self.minimum, self.grace = minimum, grace
        self.deadline: float | None = None
        self.length = 0

    def wrap(self, recv):
        def recv_in_time(nr_bytes: int):
            if nr_bytes > 6 and self.minimum:  # a PDU body (the 6-byte header comes first)
                self.length, self.deadline = nr_bytes, time.monotonic() + self.grace + nr_bytes / self.minimum
            try:
                return recv(nr_bytes)
            finally:
                self.deadline = None
        return recv_in_time

    def too_slow(self, now: float) -> str | None:
        deadline = self.deadline
        if deadline is None or now <= deadline:
            return None
        return (f"a PDU of {self.length} bytes did not arrive within {self.grace:.0f} s + its size at "
                f"[dicom] min_rate {self.minimum} bytes/s")


def abort_later(assoc, exc: BaseException) -> None:
    """The peer broke a protocol limit: abort from another thread (never the DUL's own)."""
    log.warning("dimse: aborting the association from %s: %s", assoc.requestor.ae_title, exc)
    threading.Thread(target=assoc.abort, name="dimse-abort", daemon=True).start()


def run_listener(config: dict, host: str | None = None, port: int | None = None) -> int:
    """``fhirimg dicom-listener``: listen until SIGTERM or SIGINT, then stop gracefully."""
    from ..store import create_schema, make_engine
    engine = make_engine(config["database_url"])
    create_schema(engine)  # as every process: refuses a schema older or newer than this code
    listener = Listener(config, engine=engine)
    listener.start(host, port)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    while not stopping.wait(1.0):
        pass
    log.info("DICOM listener stopping: finishing associations under way")
    listener.stop()
    engine.dispose()
    return 0
