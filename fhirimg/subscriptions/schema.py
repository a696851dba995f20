"""Tables of subscriptions: each one's delivery state, its numbered events, who it acts for,
and the matcher's place in the change sequence.

``subscription_event`` is the heart: one row per (subscription, event number), written by
the matcher in the same transaction that moves ``subscription_matcher.seq`` past the change
it describes, so an event can be neither skipped nor numbered twice whatever crashes. The
Subscription resource itself is an ordinary versioned resource; ``subscription_state``
holds what the server learns about it as it delivers (how far, the last error).
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, MetaData, PrimaryKeyConstraint, String,
                        Table, Text)

from ..store.schema import register_metadata

metadata = MetaData()
SEQ = BigInteger().with_variant(Integer, "sqlite")

subscription_matcher = Table(
    "subscription_matcher", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),  # every change up to here has been matched
    Column("updated_ms", BigInteger, nullable=False),
)

subscription_state = Table(
    "subscription_state", metadata,
    Column("sub_id", String(64), primary_key=True),
    Column("events", BigInteger, nullable=False),  # eventsSinceSubscriptionStart: the last number given
    Column("delivered", BigInteger, nullable=False),  # every event up to here was acknowledged (2xx)
    Column("started_seq", BigInteger, nullable=True),  # changes after this one can be its events (set by the matcher)
    Column("handshake_version", Integer, nullable=True),  # the version whose activation was confirmed
    Column("last_sent_ms", BigInteger, nullable=True),  # last notification of any kind that arrived
    Column("last_delivered_ms", BigInteger, nullable=True),
    Column("next_attempt_ms", BigInteger, nullable=False),  # no attempt before this (backoff)
    Column("attempts", Integer, nullable=False),  # failed attempts in a row
    Column("failing_since_ms", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("last_error_ms", BigInteger, nullable=True),
    # Who the subscription acts for: its payloads are cut to what this client may read.
    Column("client_id", String(128), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("patient", String(64), nullable=True),
    Column("issuer", String(1024), nullable=False),
    Column("anonymous", Boolean, nullable=False),
)

subscription_event = Table(
    "subscription_event", metadata,
    Column("sub_id", String(64), nullable=False),
    Column("number", BigInteger, nullable=False),
    Column("seq", SEQ, nullable=False),  # the change that is the event
    Column("res_type", String(40), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("occurred_ms", BigInteger, nullable=False),  # the change's lastUpdated
    PrimaryKeyConstraint("sub_id", "number", name="pk_subscription_event"),
    Index("ix_subscription_event_occurred", "occurred_ms"),
)

# websocket binding tokens ($get-ws-binding-token): kept hashed, good until they expire.
subscription_ws_token = Table(
    "subscription_ws_token", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("sub_ids", Text, nullable=False),  # space-separated
    Column("expires_ms", BigInteger, nullable=False),
    Index("ix_subscription_ws_token_expiry", "expires_ms"),
)

register_metadata(metadata)
