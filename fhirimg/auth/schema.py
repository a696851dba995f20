"""Tables of access control: registered clients (and every change to them), the server's
signing keys, and the client-assertion ``jti`` values already used.

All in the database, so every API node of a deployment sees the same clients, signs and
verifies with the same keys, and refuses a replayed assertion whichever node sees it.
"""
from __future__ import annotations

from sqlalchemy import (BigInteger, Boolean, Column, Index, Integer, LargeBinary, MetaData,
                        PrimaryKeyConstraint, String, Table, Text)

from ..store.schema import register_metadata

metadata = MetaData()

auth_client = Table(
    "auth_client", metadata,
    Column("client_id", String(128), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("jwks", Text, nullable=True),  # inline JWK Set (JSON), public keys only
    Column("jwks_url", String(2000), nullable=True),
    Column("scopes", Text, nullable=False),  # the most a token may get, space-separated
    Column("patients", Text, nullable=False, default=""),  # allowed Patient ids, "" = no limit
    Column("organizations", Text, nullable=False, default=""),  # allowed Organization ids
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Append-only: who changed which client how (the CLI records the operating-system user).
auth_client_change = Table(
    "auth_client_change", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("client_id", String(128), nullable=False),
    Column("action", String(16), nullable=False),  # add, update, disable, enable, remove
    Column("actor", String(200), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("details", Text, nullable=False),  # JSON of the client's settings after the change
    Index("ix_auth_client_change_client", "client_id", "at_ms"),
)

auth_signing_key = Table(
    "auth_signing_key", metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(8), nullable=False),
    Column("private_pem", LargeBinary, nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("created_ms", BigInteger, nullable=False),
    # Tokens are signed by the newest key; older keys stay published until their last
    # token has expired, then they are deleted.
)

auth_assertion_jti = Table(
    "auth_assertion_jti", metadata,
    Column("client_id", String(128), nullable=False),
    Column("jti", String(256), nullable=False),
    Column("expires_ms", BigInteger, nullable=False),
    PrimaryKeyConstraint("client_id", "jti", name="pk_auth_assertion_jti"),
    Index("ix_auth_assertion_jti_expiry", "expires_ms"),
)

register_metadata(metadata)
