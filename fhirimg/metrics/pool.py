"""This process's database pool: its size and the connections checked out of it."""
from __future__ import annotations

from sqlalchemy import event
from sqlalchemy.engine import Engine

from .instruments import Instruments


def watch_pool(engine: Engine, instruments: Instruments) -> None:
    """Count checkouts and checkins as they happen. A connection detached from the pool (the
    audit committer's own) leaves it without a checkin; an invalidated one is checked in."""
    size = getattr(engine.pool, "size", None)
    instruments.pool_size.set(size() if callable(size) else 0)
    in_use = instruments.pool_in_use
    event.listen(engine, "checkout", lambda *_: in_use.inc())
    event.listen(engine, "checkin", lambda *_: in_use.dec())
    event.listen(engine, "detach", lambda *_: in_use.dec())
