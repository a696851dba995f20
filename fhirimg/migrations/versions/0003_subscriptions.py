"""Subscriptions: the matcher's place in the change sequence, each subscription's delivery
state, its numbered events and websocket binding tokens (fhirimg/subscriptions/schema.py).

Tables only, created empty: nothing existing changes. The matcher starts at the change
sequence's value when it first runs, so an upgraded server numbers no old change.
"""
from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, PrimaryKeyConstraint, String, Text

revision = "0003_subscriptions"
down_revision = "0002_auth_app_launch"
branch_labels = None
depends_on = None


def upgrade() -> None:
    seq = BigInteger().with_variant(Integer, "sqlite")
    op.create_table("subscription_matcher",
                    Column("id", Integer, primary_key=True, autoincrement=False),
                    Column("seq", BigInteger, nullable=False), Column("updated_ms", BigInteger, nullable=False))
    op.create_table("subscription_state",
                    Column("sub_id", String(64), primary_key=True),
                    Column("events", BigInteger, nullable=False), Column("delivered", BigInteger, nullable=False),
                    Column("started_seq", BigInteger, nullable=True),
                    Column("handshake_version", Integer, nullable=True),
                    Column("last_sent_ms", BigInteger, nullable=True),
                    Column("last_delivered_ms", BigInteger, nullable=True),
                    Column("next_attempt_ms", BigInteger, nullable=False),
                    Column("attempts", Integer, nullable=False),
                    Column("failing_since_ms", BigInteger, nullable=True),
                    Column("last_error", Text, nullable=True), Column("last_error_ms", BigInteger, nullable=True),
                    Column("client_id", String(128), nullable=False), Column("scopes", Text, nullable=False),
                    Column("patient", String(64), nullable=True), Column("issuer", String(1024), nullable=False),
                    Column("anonymous", Boolean, nullable=False))
    op.create_table("subscription_event",
                    Column("sub_id", String(64), nullable=False), Column("number", BigInteger, nullable=False),
                    Column("seq", seq, nullable=False), Column("res_type", String(40), nullable=False),
                    Column("res_id", String(64), nullable=False), Column("version", Integer, nullable=False),
                    Column("occurred_ms", BigInteger, nullable=False),
                    PrimaryKeyConstraint("sub_id", "number", name="pk_subscription_event"),
                    Index("ix_subscription_event_occurred", "occurred_ms"))

    op.create_table("subscription_ws_token",
                    Column("token_hash", String(64), primary_key=True),
                    Column("client_id", String(128), nullable=False), Column("sub_ids", Text, nullable=False),
                    Column("expires_ms", BigInteger, nullable=False),
                    Index("ix_subscription_ws_token_expiry", "expires_ms"))


def downgrade() -> None:
    for table in ("subscription_ws_token", "subscription_event", "subscription_state", "subscription_matcher"):
        op.drop_table(table)
