"""Authorization codes (RFC 6749 §4.1, RFC 7636): issued at sign-in, exchanged once at the
token endpoint within 60 seconds by the same client, for the same redirect URI, with the
``code_verifier`` whose S256 is the challenge.

Kept in the database (every worker process and node sees them) by SHA-256 of the code: a
copy of the table opens nothing. A code is marked used before anything else is checked, so
a second try - a replay, or a first try with a wrong verifier - always fails; a replay
revokes nothing else.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from ..store.engine import WRITE_OPTION
from .errors import OAuthError
from .launch import AuthorizationRequest, Grant
from .schema import auth_code

CODE_LIFETIME = 60  # app-launch.html: "usually expiring within around one minute"
CODE_VERIFIER = re.compile(r"^[A-Za-z0-9\-._~]{43,128}\Z")  # RFC 7636 §4.1
PURGE_AFTER_MS = 3_600_000


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()


@dataclass
class CodeStore:
    engine: Engine
    lifetime: int = CODE_LIFETIME
    clock: object = time.time

    def issue(self, grant: Grant, ask: AuthorizationRequest) -> str:
        code = secrets.token_urlsafe(32)
        now_ms = int(self.clock() * 1000)
        with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            conn.execute(delete(auth_code).where(auth_code.c.expires_ms < now_ms - PURGE_AFTER_MS))
            conn.execute(insert(auth_code).values(
                code_hash=digest(code), client_id=ask.client.client_id, redirect_uri=ask.redirect_uri,
                code_challenge=ask.code_challenge, grant=json.dumps(grant.to_json()),
                expires_ms=now_ms + self.lifetime * 1000, used=False))
        return code

    def redeem(self, code: str, client_id: str, redirect_uri: str, verifier: str) -> Grant:
        """The grant of a code, once; OAuthError invalid_grant for anything amiss."""
        if not code or len(code) > 200:
            raise OAuthError("invalid_grant", "code is missing")
        key = digest(code)
        with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            row = conn.execute(select(auth_code).where(auth_code.c.code_hash == key)).first()
            first_use = row is not None and conn.execute(update(auth_code).where(
                auth_code.c.code_hash == key, auth_code.c.used.is_(False)).values(used=True)).rowcount == 1
        if row is None:
            raise OAuthError("invalid_grant", "unknown code")
        if not first_use:
            raise OAuthError("invalid_grant", "the code was used before")
        if row.expires_ms < self.clock() * 1000:
            raise OAuthError("invalid_grant", f"the code has expired (codes live {self.lifetime} s)")
        if row.client_id != client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if row.redirect_uri != redirect_uri:
            raise OAuthError("invalid_grant", "redirect_uri is not the one of the authorization request")
        if not verifier or not CODE_VERIFIER.match(verifier):
            raise OAuthError("invalid_grant", "code_verifier is missing or not 43-128 unreserved characters")
        if not hmac.compare_digest(s256(verifier), row.code_challenge):
            raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge (S256)")
        return Grant(**json.loads(row.grant))
