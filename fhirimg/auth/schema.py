"""Tables of access control: registered clients (and every change to them) with their
redirect URIs, the server's signing keys, the client-assertion ``jti`` values already used,
and for SMART App Launch the operator accounts (and every change to them), the failed
sign-ins that throttle guessing, the authorization codes and the refresh tokens.

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

# Where the authorization endpoint may send a client's browser back (App Launch): exact
# strings, compared whole. A path ("/console/callback") means this server's own origin.
auth_client_redirect = Table(
    "auth_client_redirect", metadata,
    Column("client_id", String(128), nullable=False),
    Column("redirect_uri", String(2000), nullable=False),
    PrimaryKeyConstraint("client_id", "redirect_uri", name="pk_auth_client_redirect"),
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

# Operator accounts of the authorization endpoint (``fhirimg users ...``).
auth_user = Table(
    "auth_user", metadata,
    Column("username", String(64), primary_key=True),
    Column("password_hash", Text, nullable=False),  # Argon2id, PHC string format
    Column("scopes", Text, nullable=False),  # the most a token for this user may carry
    Column("patients", Text, nullable=False, default=""),  # allowed Patient ids, "" = no limit
    Column("fhir_user", String(200), nullable=True),  # e.g. Practitioner/123
    Column("disabled", Boolean, nullable=False, default=False),
    Column("created_ms", BigInteger, nullable=False),
    Column("updated_ms", BigInteger, nullable=False),
)

# Append-only, like auth_client_change; never holds a password or its hash.
auth_user_change = Table(
    "auth_user_change", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(64), nullable=False),
    Column("action", String(16), nullable=False),  # add, update, passwd, rehash, disable, enable, remove
    Column("actor", String(200), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("details", Text, nullable=False),
    Index("ix_auth_user_change_user", "username", "at_ms"),
)

# One row per failed sign-in under a key ("user:NAME", "address:IP"): counted in a window
# by every worker process, so the throttle holds however many there are.
auth_login_failure = Table(
    "auth_login_failure", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Index("ix_auth_login_failure_key", "key", "at_ms"),
    Index("ix_auth_login_failure_at", "at_ms"),
)

# Authorization codes, by SHA-256 of the code (the code itself is never stored): single
# use, 60 s, bound to the client, the redirect URI and the PKCE challenge.
auth_code = Table(
    "auth_code", metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("redirect_uri", String(2000), nullable=False),
    Column("code_challenge", String(128), nullable=False),
    Column("grant", Text, nullable=False),  # JSON: user, scope, aud, patients, nonce, auth time
    Column("expires_ms", BigInteger, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
    Index("ix_auth_code_expiry", "expires_ms"),
)

# Refresh tokens (online_access), by SHA-256; each is used once and replaced by the next
# of its family. A used one shown again revokes the family (a stolen token was used).
auth_refresh_token = Table(
    "auth_refresh_token", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("family", String(32), nullable=False),
    Column("client_id", String(128), nullable=False),
    Column("username", String(64), nullable=False),
    Column("grant", Text, nullable=False),  # JSON, as auth_code.grant
    Column("expires_ms", BigInteger, nullable=False),  # idle limit, never past the family's end
    Column("family_expires_ms", BigInteger, nullable=False),
    Column("used", Boolean, nullable=False, default=False),
    Index("ix_auth_refresh_family", "family"),
    Index("ix_auth_refresh_user", "username"),
    Index("ix_auth_refresh_expiry", "family_expires_ms"),
)

register_metadata(metadata)
