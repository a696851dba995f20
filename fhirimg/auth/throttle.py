"""A brake on password guessing at the authorization endpoint: failed sign-ins are counted
per user name and per client address over a window, in the database (every worker
process and node counts the same failures).

Past the limit, sign-in under that name (or from that address) is refused without checking
the password until old failures leave the window. A name is counted whether or not such
a user exists, so the brake says nothing about which names exist. The price: someone who
knows a user name can keep that user out for the window (the address limit bounds one
attacker; behind a proxy that does not pass the address, everyone shares one).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Engine

from ..store.engine import WRITE_OPTION
from .schema import auth_login_failure
from .users import USERNAME

MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_ADDRESS = 30
WINDOW_SECONDS = 900


@dataclass
class LoginThrottle:
    engine: Engine
    per_user: int = MAX_FAILURES_PER_USER
    per_address: int = MAX_FAILURES_PER_ADDRESS
    window: float = WINDOW_SECONDS
    clock: object = time.time

    def refusal(self, username: str, address: str) -> str | None:
        """Why sign-in is refused now (for the audit trail), or None."""
        since = int((self.clock() - self.window) * 1000)
        t = auth_login_failure
        with self.engine.connect() as conn:
            counts = dict(conn.execute(select(t.c.key, func.count()).where(
                t.c.key.in_([user_key(username), address_key(address)]), t.c.at_ms > since).group_by(t.c.key)).all())
        if counts.get(user_key(username), 0) >= self.per_user:
            return f"throttled: {self.per_user} failed sign-ins for this user name in {int(self.window)} s"
        if counts.get(address_key(address), 0) >= self.per_address:
            return f"throttled: {self.per_address} failed sign-ins from this address in {int(self.window)} s"
        return None

    def note_failure(self, username: str, address: str) -> None:
        now_ms = int(self.clock() * 1000)
        with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            conn.execute(delete(auth_login_failure).where(
                auth_login_failure.c.at_ms < now_ms - int(self.window * 1000)))
            conn.execute(insert(auth_login_failure), [{"key": user_key(username), "at_ms": now_ms},
                                                      {"key": address_key(address), "at_ms": now_ms}])

    def note_success(self, username: str) -> None:
        """The user's own count starts again (the address's does not: one known password
        must not reset the count of an address guessing others)."""
        with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            conn.execute(delete(auth_login_failure).where(auth_login_failure.c.key == user_key(username)))


def user_key(username: str) -> str:
    """Names that cannot be a user share one count (and no NUL reaches the database)."""
    return "user:" + (username if USERNAME.match(username) else "(not a user name)")


def address_key(address: str) -> str:
    return "address:" + "".join(c for c in (address or "unknown")[:100] if c.isprintable())
