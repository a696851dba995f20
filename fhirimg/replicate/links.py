"""Each link's row: its cursor, counters, and what went wrong last.

The cursor is claimed with a compare-and-set at the start of the transaction that
applies a page: the row stays locked until commit, and a second runner of the same
link (two workers, a CLI run beside the scheduled job) finds the cursor moved and
backs off instead of applying the same page twice.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..store.engine import WRITE_OPTION

from .schema import replication_event, replication_link
from .settings import Link


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """A write transaction that takes SQLite's write lock at BEGIN (a deferred one that
    reads first can fail with SQLITE_BUSY when it upgrades); plain BEGIN on PostgreSQL."""
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn:
        with conn.begin():
            yield conn


class CursorMoved(Exception):
    """Another runner advanced this link's cursor; this run stops without writing."""


@dataclass
class LinkState:
    name: str
    direction: str
    url: str
    cursor: str | None
    peer_site: str | None
    applied: int
    skipped: int
    conflicts: int
    rejected: int
    source_seq: int | None
    position_seq: int | None
    caught_up_ms: int | None
    last_run_ms: int | None
    last_success_ms: int | None
    last_error: str | None
    last_error_ms: int | None


def load_state(engine: Engine, link: Link, now_ms: int) -> LinkState:
    """The link's row, created on first use; a link may not change direction or URL silently."""
    with writing(engine) as conn:
        row = conn.execute(select(replication_link).where(replication_link.c.name == link.name)).first()
        if row is None:
            try:
                with conn.begin_nested():  # a savepoint: on PostgreSQL a failed insert aborts the transaction
                    conn.execute(replication_link.insert().values(
                        name=link.name, direction=link.direction, url=link.url, applied=0, skipped=0,
                        conflicts=0, rejected=0, last_run_ms=now_ms))
            except IntegrityError:
                pass  # made concurrently
            row = conn.execute(select(replication_link).where(replication_link.c.name == link.name)).one()
    state = LinkState(**row._mapping)
    if state.direction != link.direction or state.url != link.url:
        raise ValueError(f"link {link.name!r} already exists for {state.direction} {state.url}; "
                         f"use another name for {link.direction} {link.url}")
    return state


def all_states(engine: Engine) -> list[LinkState]:
    with engine.connect() as conn:
        return [LinkState(**row._mapping) for row in
                conn.execute(select(replication_link).order_by(replication_link.c.name))]


def claim_cursor(conn: Connection, name: str, expected: str | None, now_ms: int) -> None:
    """Lock the link's row if its cursor is still `expected`; else raise CursorMoved."""
    rl = replication_link
    same = rl.c.cursor.is_(None) if expected is None else rl.c.cursor == expected
    result = conn.execute(update(rl).where(rl.c.name == name, same).values(last_run_ms=now_ms))
    if result.rowcount != 1:
        raise CursorMoved(f"link {name}: another run moved the cursor; stopping this one")


def advance(conn: Connection, state: LinkState, cursor: str, now_ms: int, *, applied: int = 0,
            skipped: int = 0, conflicts: int = 0, rejected: int = 0, **fields) -> None:
    """Move the cursor and count what the page did, in the caller's transaction."""
    rl = replication_link
    conn.execute(update(rl).where(rl.c.name == state.name).values(
        cursor=cursor, applied=rl.c.applied + applied, skipped=rl.c.skipped + skipped,
        conflicts=rl.c.conflicts + conflicts, rejected=rl.c.rejected + rejected,
        last_success_ms=now_ms, last_error=None, last_error_ms=None, **fields))
    state.cursor = cursor


def record_error(engine: Engine, name: str, message: str, now_ms: int) -> None:
    with writing(engine) as conn:
        conn.execute(update(replication_link).where(replication_link.c.name == name)
                     .values(last_error=message[:4000], last_error_ms=now_ms))


def record_event(conn: Connection, link: str, kind: str, detail: str, now_ms: int, res_type: str | None = None,
                 res_id: str | None = None, source_version: int | None = None) -> None:
    conn.execute(replication_event.insert().values(link=link, kind=kind, res_type=res_type, res_id=res_id,
                                                   source_version=source_version, detail=detail[:4000],
                                                   at_ms=now_ms))


def recent_events(engine: Engine, link: str, limit: int = 5) -> list[dict]:
    ev = replication_event
    with engine.connect() as conn:
        rows = conn.execute(select(ev).where(ev.c.link == link).order_by(ev.c.id.desc()).limit(limit))
        return [dict(r._mapping) for r in rows]


def set_fields(engine: Engine, name: str, **fields) -> None:
    with writing(engine) as conn:
        conn.execute(update(replication_link).where(replication_link.c.name == name).values(**fields))
