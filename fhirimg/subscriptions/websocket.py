"""The websocket channel: a listener that binds connections to subscriptions by token.

A client asks ``$get-ws-binding-token`` (authorized like a read of the subscriptions), opens
a websocket to ``websocket-url`` and sends ``bind-with-token: <token>`` (R5 subscription
channel "websocket"); browsers cannot send an Authorization header on a websocket, which is
why the token exists. Tokens are random, kept hashed, bound to the client and the
subscriptions named, and expire (``ws_token_seconds``). One connection may carry several
bindings, each with its own subscriptions.

On bind each subscription gets a ``handshake`` (and turns ``active`` if it was
``requested``); from then on the listener sends every event numbered after the bind, one
notification per event, in order, cut to what the subscriber may read now (notify.py),
and a ``heartbeat`` when nothing was sent for ``heartbeatPeriod``. Websockets have no
acknowledgement: a client that was away finds the gap in the event numbers and replays it
with ``$events``. Every notification sent is an AuditEvent, like a rest-hook delivery.

The listener is its own process (``fhirimg subscriptions websocket``; ``make run`` starts it):
long-lived connections do not hold the API's worker threads. Its work on the database runs
in threads beside the event loop.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from dataclasses import dataclass

import orjson
from sqlalchemy import delete, insert, select

from ..replicate.links import writing
from ..store import Repository, make_engine
from . import notify
from .deliver import audit_notification, set_status
from .grants import subscriber
from .matcher import LIVE_STATUSES
from .notify import Event
from .rules import subscription_rules
from .schema import subscription_event, subscription_state, subscription_ws_token
from .validate import channel_code

log = logging.getLogger("fhirimg.subscriptions")
BIND = "bind-with-token:"
MAX_MESSAGE = 4096
BATCH = 100
MAX_CONNECTIONS = 1000
MAX_PER_PEER = 50
MAX_BINDINGS = 100  # subscriptions on one connection
BIND_SECONDS = 30


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(engine, client_id: str, sub_ids: list[str], seconds: int, now_ms: int) -> tuple[str, int]:
    """A new binding token for `sub_ids` (checked by the caller); returns it and its expiry."""
    token = secrets.token_urlsafe(32)
    expires = now_ms + seconds * 1000
    tok = subscription_ws_token
    with writing(engine) as conn:
        conn.execute(delete(tok).where(tok.c.expires_ms < now_ms))
        conn.execute(insert(tok).values(token_hash=token_hash(token), client_id=client_id[:128],
                                        sub_ids=" ".join(sub_ids), expires_ms=expires))
    return token, expires


def redeem(engine, token: str, now_ms: int) -> tuple[str, list[str]] | None:
    """(client, subscription ids) of a token that is known and not expired."""
    if not token or len(token) > 200:
        return None
    tok = subscription_ws_token
    with engine.connect() as conn:
        row = conn.execute(select(tok).where(tok.c.token_hash == token_hash(token))).first()
    if row is None or row.expires_ms < now_ms:
        return None
    return row.client_id, row.sub_ids.split()


@dataclass
class Bound:
    sub_id: str
    client_id: str
    last_number: int
    heartbeat: float | None
    last_sent: float


class Listener:
    def __init__(self, config: dict, engine=None, clock=time.time):
        from .jobs import own_base
        self.rules = subscription_rules(config)
        self.settings = self.rules.settings
        self.engine = engine or make_engine(config["database_url"])
        self.repo = Repository(self.engine, role="fhirimg-subscriptions")
        self.base = own_base(config)
        self.clock = clock
        self.connections = 0
        self.per_peer: dict[str, int] = {}

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def serve(self, host: str, port: int, started: asyncio.Future | None = None,
                    stop: asyncio.Event | None = None) -> None:
        from websockets.asyncio.server import serve
        async with serve(self.handler, host, port, max_size=MAX_MESSAGE, max_queue=8, ping_interval=20,
                         ping_timeout=20, close_timeout=5) as server:
            bound_port = next(iter(server.sockets)).getsockname()[1]
            log.info("subscriptions websocket listener at ws://%s:%s", host, bound_port)
            if started is not None:
                started.set_result(bound_port)
            await (stop.wait() if stop is not None else asyncio.Future())

    async def handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed
        peer = (ws.remote_address or ("",))[0]
        if self.connections >= MAX_CONNECTIONS or self.per_peer.get(peer, 0) >= MAX_PER_PEER:
            await ws.close(1013, "too many connections; try again later")
            return
        bound: dict[str, Bound] = {}
        receiving = asyncio.create_task(self.receive(ws, bound, peer))
        self.connections += 1
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        try:
            while not receiving.done():
                await asyncio.wait([receiving], timeout=self.settings.poll_interval)
                if bound and not receiving.done():
                    await self.push(ws, bound, peer)
        except ConnectionClosed:
            pass
        finally:
            self.connections -= 1
            self.per_peer[peer] -= 1
            if not self.per_peer[peer]:
                del self.per_peer[peer]
            receiving.cancel()

    async def receive(self, ws, bound: dict[str, Bound], peer: str) -> None:
        from websockets.exceptions import ConnectionClosed
        try:
            # A connection that has not bound within BIND_SECONDS is closed (it holds a slot).
            first = asyncio.get_running_loop().call_later(
                BIND_SECONDS, lambda: None if bound else asyncio.ensure_future(ws.close(1008, "bind within "
                                                                                         f"{BIND_SECONDS} s")))
            async for message in ws:
                first.cancel()
                if len(bound) >= MAX_BINDINGS:
                    await ws.close(1008, f"at most {MAX_BINDINGS} subscriptions per connection")
                    return
                if not isinstance(message, str) or not message.startswith(BIND):
                    await ws.close(1003, "expected 'bind-with-token: <token>'")
                    return
                bindings = await asyncio.to_thread(self.bind, message[len(BIND):].strip(), peer)
                if bindings is None:
                    await ws.send(orjson.dumps(outcome("the binding token is unknown or expired; ask "
                                                       "$get-ws-binding-token for a new one")).decode())
                    await ws.close(1008, "binding token unknown or expired")
                    return
                for item, handshake in bindings:
                    bound[item.sub_id] = item
                    await ws.send(orjson.dumps(handshake).decode())
        except ConnectionClosed:
            return

    def bind(self, token: str, peer: str) -> list[tuple[Bound, dict]] | None:
        redeemed = redeem(self.engine, token, self.now_ms())
        if redeemed is None:
            return None
        client_id, sub_ids = redeemed
        out = []
        for sub_id in sub_ids:
            stored = self.repo.read("Subscription", sub_id)
            if stored is None or stored.is_deleted or channel_code(stored.resource) != "websocket":
                continue
            if stored.resource.get("status") not in LIVE_STATUSES:
                continue
            if stored.resource.get("status") != "active":
                set_status(self.repo, sub_id, "active")
                stored = self.repo.read("Subscription", sub_id)
            with self.engine.connect() as conn:
                state = conn.execute(select(subscription_state).where(subscription_state.c.sub_id == sub_id)).first()
            if state is None or state.client_id != client_id:
                continue  # the token's client binds its own subscriptions only
            handshake = notify.handshake(sub_id, stored.resource, state.events, self.now_ms())
            audit_notification(self.repo, sub_id, state.client_id, "handshake", None, 200, None, peer, self.now_ms())
            out.append((Bound(sub_id, state.client_id, state.events, stored.resource.get("heartbeatPeriod"),
                              time.monotonic()), handshake))
        return out

    async def push(self, ws, bound: dict[str, Bound], peer: str) -> None:
        for item in list(bound.values()):
            messages = await asyncio.to_thread(self.collect, item)
            for number, body, event in messages:
                await self.send(ws, item, body, "event-notification", event, peer)
                item.last_number, item.last_sent = number, time.monotonic()
            if not messages and item.heartbeat and time.monotonic() - item.last_sent >= item.heartbeat:
                body = await asyncio.to_thread(self.heartbeat, item)
                if body is None:
                    bound.pop(item.sub_id, None)  # deleted, or turned off: nothing more to send
                    continue
                await self.send(ws, item, body, "heartbeat", None, peer)
                item.last_sent = time.monotonic()

    async def send(self, ws, item: Bound, body: dict, kind: str, event: Event | None, peer: str) -> None:
        """One notification on the socket, audited whether it went out or not."""
        from websockets.exceptions import ConnectionClosed
        try:
            await ws.send(orjson.dumps(body).decode())
        except ConnectionClosed:
            await asyncio.to_thread(audit_notification, self.repo, item.sub_id, item.client_id, kind, event, 499,
                                    "the websocket closed before it was sent", peer, self.now_ms())
            raise
        await asyncio.to_thread(audit_notification, self.repo, item.sub_id, item.client_id, kind, event, 200, None,
                                peer, self.now_ms())

    def collect(self, item: Bound) -> list[tuple[int, dict, Event]]:
        """Notifications of the events after the last one sent (one per event)."""
        ev = subscription_event
        with self.engine.connect() as conn:
            rows = conn.execute(select(ev).where(ev.c.sub_id == item.sub_id, ev.c.number > item.last_number)
                                .order_by(ev.c.number).limit(BATCH)).all()
            if not rows:
                return []
            stored = self.repo.read("Subscription", item.sub_id)
            state = conn.execute(select(subscription_state).where(subscription_state.c.sub_id == item.sub_id)).first()
            if stored is None or stored.is_deleted or state is None or stored.resource.get("status") not in LIVE_STATUSES:
                return []
            principal = subscriber(conn, state)
            out = []
            for row in rows:
                event = Event(row.number, row.seq, row.res_type, row.res_id, row.version, row.occurred_ms)
                out.append((row.number, notify.event_notification(conn, item.sub_id, stored.resource, principal,
                                                                  state.events, [event], self.base, self.now_ms()),
                            event))
        return out

    def heartbeat(self, item: Bound) -> dict | None:
        stored = self.repo.read("Subscription", item.sub_id)
        if stored is None or stored.is_deleted or stored.resource.get("status") not in LIVE_STATUSES:
            return None
        with self.engine.connect() as conn:
            events = conn.execute(select(subscription_state.c.events)
                                  .where(subscription_state.c.sub_id == item.sub_id)).scalar() or 0
        return notify.heartbeat(item.sub_id, stored.resource, events, self.now_ms())


def outcome(text: str) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "security", "diagnostics": text}]}


def websocket_url(config: dict) -> str:
    settings = subscription_rules(config).settings
    if settings.websocket_url:
        return settings.websocket_url
    host = settings.websocket_host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"ws://{host}:{settings.websocket_port}/fhir/websocket"


def run_listener(config: dict) -> None:
    settings = subscription_rules(config).settings
    asyncio.run(Listener(config).serve(settings.websocket_host, settings.websocket_port))
