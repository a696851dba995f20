"""SMART App Launch: client redirect URIs, operator accounts (and their changes), failed
sign-ins, authorization codes and refresh tokens (fhirimg/auth/schema.py).

Tables only, created empty: nothing existing changes, so an upgrade from the baseline is
quick and a server of the baseline could not tell the difference.
"""
from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, PrimaryKeyConstraint, String, Text

revision = "0002_auth_app_launch"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _accounts()
    _grants()


def _accounts() -> None:
    op.create_table("auth_client_redirect",
                    Column("client_id", String(128), nullable=False),
                    Column("redirect_uri", String(2000), nullable=False),
                    PrimaryKeyConstraint("client_id", "redirect_uri", name="pk_auth_client_redirect"))
    op.create_table("auth_user",
                    Column("username", String(64), primary_key=True),
                    Column("password_hash", Text, nullable=False), Column("scopes", Text, nullable=False),
                    Column("patients", Text, nullable=False), Column("fhir_user", String(200), nullable=True),
                    Column("disabled", Boolean, nullable=False), Column("created_ms", BigInteger, nullable=False),
                    Column("updated_ms", BigInteger, nullable=False))
    op.create_table("auth_user_change",
                    Column("id", Integer, primary_key=True, autoincrement=True),
                    Column("username", String(64), nullable=False), Column("action", String(16), nullable=False),
                    Column("actor", String(200), nullable=False), Column("at_ms", BigInteger, nullable=False),
                    Column("details", Text, nullable=False),
                    Index("ix_auth_user_change_user", "username", "at_ms"))
    op.create_table("auth_login_failure",
                    Column("id", Integer, primary_key=True, autoincrement=True),
                    Column("key", String(200), nullable=False), Column("at_ms", BigInteger, nullable=False),
                    Index("ix_auth_login_failure_key", "key", "at_ms"),
                    Index("ix_auth_login_failure_at", "at_ms"))


def _grants() -> None:
    op.create_table("auth_code",
                    Column("code_hash", String(64), primary_key=True),
                    Column("client_id", String(128), nullable=False),
                    Column("redirect_uri", String(2000), nullable=False),
                    Column("code_challenge", String(128), nullable=False), Column("grant", Text, nullable=False),
                    Column("expires_ms", BigInteger, nullable=False), Column("used", Boolean, nullable=False),
                    Index("ix_auth_code_expiry", "expires_ms"))
    op.create_table("auth_refresh_token",
                    Column("token_hash", String(64), primary_key=True),
                    Column("family", String(32), nullable=False), Column("client_id", String(128), nullable=False),
                    Column("username", String(64), nullable=False), Column("grant", Text, nullable=False),
                    Column("expires_ms", BigInteger, nullable=False),
                    Column("family_expires_ms", BigInteger, nullable=False),
                    Column("used", Boolean, nullable=False),
                    Index("ix_auth_refresh_family", "family"),
                    Index("ix_auth_refresh_user", "username"),
                    Index("ix_auth_refresh_expiry", "family_expires_ms"))


def downgrade() -> None:
    for table in ("auth_refresh_token", "auth_code", "auth_login_failure", "auth_user_change", "auth_user",
                  "auth_client_redirect"):
        op.drop_table(table)
