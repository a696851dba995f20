"""Refresh tokens for ``online_access`` (app-launch.html step 7): a signed-in user's app
keeps getting access tokens while the user is at it, and no longer.

Each refresh token is used once and answered with the next of its family (rotation, as
the OAuth security BCP asks of public clients). A used token shown again means two parties
hold the family - one stole it - so the whole family is revoked. A family ends
SESSION_SECONDS after sign-in, and a token not used for IDLE_SECONDS lapses ("online").
Stored by SHA-256 only; changing, disabling or removing the user deletes them.
"""
from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from ..store.engine import WRITE_OPTION
from .codes import digest
from .errors import OAuthError
from .launch import Grant
from .schema import auth_refresh_token

SESSION_SECONDS = 12 * 3600  # a working day's shift, then sign in again
IDLE_SECONDS = 30 * 60


@dataclass
class Renewal:
    grant: Grant
    family: str
    family_expires_ms: int


@dataclass
class RefreshStore:
    engine: Engine
    session: int = SESSION_SECONDS
    idle: int = IDLE_SECONDS
    clock: object = time.time

    def _writing(self):
        return self.engine.connect().execution_options(**{WRITE_OPTION: True})

    def issue(self, grant: Grant, renewal: Renewal | None = None) -> str:
        """A refresh token for `grant`: a new family, or the next of `renewal`'s."""
        token = secrets.token_urlsafe(32)
        now_ms = int(self.clock() * 1000)
        family = renewal.family if renewal else uuid.uuid4().hex
        family_end = renewal.family_expires_ms if renewal else now_ms + self.session * 1000
        with self._writing() as conn, conn.begin():
            conn.execute(delete(auth_refresh_token).where(auth_refresh_token.c.family_expires_ms < now_ms))
            conn.execute(insert(auth_refresh_token).values(
                token_hash=digest(token), family=family, client_id=grant.client_id, username=grant.username,
                grant=json.dumps(grant.to_json()), expires_ms=min(family_end, now_ms + self.idle * 1000),
                family_expires_ms=family_end, used=False))
        return token

    def use(self, token: str, client_id: str) -> Renewal:
        """The grant behind a refresh token, which is used up now; OAuthError invalid_grant."""
        if not token or len(token) > 200:
            raise OAuthError("invalid_grant", "refresh_token is missing")
        key = digest(token)
        t = auth_refresh_token
        with self._writing() as conn, conn.begin():
            row = conn.execute(select(t).where(t.c.token_hash == key)).first()
            first_use = row is not None and row.client_id == client_id and conn.execute(
                update(t).where(t.c.token_hash == key, t.c.used.is_(False)).values(used=True)).rowcount == 1
            if row is not None and row.client_id == client_id and not first_use:
                conn.execute(delete(t).where(t.c.family == row.family))  # reuse: revoke the family
        if row is None or row.client_id != client_id:
            raise OAuthError("invalid_grant", "unknown refresh_token (or one of another client)")
        if not first_use:
            raise OAuthError("invalid_grant", "the refresh_token was used before; its session is revoked")
        if row.expires_ms < self.clock() * 1000:
            raise OAuthError("invalid_grant", "the refresh_token has lapsed; sign in again")
        return Renewal(Grant(**json.loads(row.grant)), row.family, row.family_expires_ms)

    def revoke(self, token: str, client_id: str) -> bool:
        """RFC 7009: revoke the token's family (the session); False if it was not one of the client's."""
        t = auth_refresh_token
        with self._writing() as conn, conn.begin():
            row = conn.execute(select(t.c.family, t.c.client_id).where(t.c.token_hash == digest(token or ""))).first()
            if row is None or row.client_id != client_id:
                return False
            conn.execute(delete(t).where(t.c.family == row.family))
        return True
