"""The versioned repository: read, vread, create, update, delete inside one DB transaction.

A UnitOfWork is one database transaction. Conflicts are detected as they happen (the
current-version row is updated with a compare-and-set on its version number, a new row
hits the primary key), while version rows, the change sequence and lastUpdated are
written together at commit under the change counter's row lock, so ``seq`` order is
commit order on PostgreSQL as well as on SQLite.
"""
from __future__ import annotations

import functools
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple

import orjson
from sqlalchemy import and_, select, tuple_, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, PreconditionFailed
from . import driver
from .engine import WRITE_OPTION
from .records import StoredVersion, format_instant
from .schema import change_counter, resource_current, resource_version

SERVER_META = ("versionId", "lastUpdated")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> str:
    return str(uuid.uuid4())


class Repository:
    """Entry point to storage; pass it explicitly to whatever needs it.

    With `audit` (the default) every version written gets its write AuditEvent in the same
    transaction (audit/writes.py), naming the transaction's actor: the request's client, or
    - for workers, replication and the CLI - this server acting as `role`."""

    def __init__(self, engine: Engine, clock: Callable[[], int] = wall_clock_ms, indexer=None,
                 audit: bool = True, role: str = "fhirimg", site: str | None = None):
        from ..search import index as default_indexer
        self.engine = engine
        self.clock = clock
        self.indexer = indexer or default_indexer
        self.auditor = None
        if audit:
            from ..audit.writes import audit_writes
            self.auditor = audit_writes
        self.role = role
        self._site = site

    @property
    def site(self) -> str:
        """This server as the audit trail names it (the site id of replication)."""
        if self._site is None:
            from ..replicate.origin import site_id
            self._site = site_id(self.engine)
        return self._site

    def server_actor(self):
        from ..audit.events import Actor
        return Actor(self.role, self.site)

    @contextmanager
    def transaction(self, guard=None, actor=None) -> Iterator["UnitOfWork"]:
        """One write transaction; commits when the block ends normally, else rolls back.

        `guard` (auth.decision.WriteGuard) sees every change before it is made and all of
        them before commit; an exception from it rolls everything back. `actor`
        (audit.events.Actor) is who the write events name; None: this server."""
        if self.auditor is not None and actor is None:
            actor = self.server_actor()
        with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn:
            with conn.begin():
                uow = UnitOfWork(conn, self.clock, self.indexer, guard=guard, auditor=self.auditor, actor=actor)
                yield uow
                if guard is not None:
                    guard.before_commit(uow)
                uow.flush_versions()

    @contextmanager
    def reading(self) -> Iterator["UnitOfWork"]:
        """A read-only transaction (no write lock on SQLite)."""
        with self.engine.connect() as conn:
            with conn.begin():
                yield UnitOfWork(conn, self.clock, self.indexer, read_only=True)

    def read(self, res_type: str, res_id: str) -> StoredVersion | None:
        with self.reading() as uow:
            return uow.read(res_type, res_id)

    def vread(self, res_type: str, res_id: str, version: int) -> StoredVersion | None:
        with self.reading() as uow:
            return uow.vread(res_type, res_id, version)

    def create(self, res_type: str, resource: dict, res_id: str | None = None) -> StoredVersion:
        with self.transaction() as uow:
            return uow.create(res_type, resource, res_id)

    def update(self, res_type: str, res_id: str, resource: dict, if_match: int | None = None) -> StoredVersion:
        with self.transaction() as uow:
            return uow.update(res_type, res_id, resource, if_match)

    def delete(self, res_type: str, res_id: str, if_match: int | None = None) -> StoredVersion | None:
        with self.transaction() as uow:
            return uow.delete(res_type, res_id, if_match)


class UnitOfWork:
    """The operations of one database transaction.

    On PostgreSQL the rows a write adds besides its version - the current row of a new
    resource, its index rows - are held back and sent together, in one statement, just
    before the next statement that could read them (anything run on ``conn``) or at
    commit: a push of a Patient and an ImagingStudy sent 4 statements for them, now 1.
    On SQLite they are held the same way and sent one statement a table (the current rows
    before anything reads or changes a current row).
    """

    def __init__(self, conn: Connection, clock, indexer, read_only: bool = False, guard=None,
                 auditor=None, actor=None):
        self._conn = conn
        self.guard = guard
        self.auditor = auditor
        self.actor = actor
        self.previous: dict[tuple[str, str], dict | None] = {}  # content before this unit changed it
        self.clock = clock
        self.indexer = indexer
        self.read_only = read_only
        self.is_postgres = conn.dialect.name == "postgresql"
        self.pending: dict[tuple[str, str], StoredVersion] = {}
        self.known: dict[tuple[str, str], StoredVersion | None] = {}  # read ahead by prime()
        self.written: list[StoredVersion] = []
        self.held = HeldWrites()
        self.failed: Exception | None = None  # a held write that failed: this unit may not commit

    @property
    def conn(self) -> Connection:
        """The transaction's connection, with every write of this unit of work sent to it."""
        if self.held:
            self.write_held()
        return self._conn

    @property
    def rows_conn(self) -> Connection:
        """The connection for reading and writing the current and version rows: on SQLite
        the held index rows need not be sent first (only searches read them), the held
        current rows of new resources must."""
        if self.is_postgres:
            return self.conn
        if self.held.created:
            self._insert_created()
        return self._conn

    def _insert_created(self) -> None:
        """SQLite: the current rows of the resources created since the last time, in one
        statement. The database's write lock is held from the transaction's start, so a row
        already there was made by this transaction's caller naming an id twice."""
        created, self.held.created = self.held.created, []
        try:
            self._conn.execute(resource_current.insert(), [
                {"res_type": t, "res_id": i, "version": 1, "is_deleted": False, "last_updated_ms": 0}
                for t, i in created])
        except IntegrityError:
            self.failed = created_concurrently(*created[0])
            raise self.failed from None

    def prime(self, res_type: str, res_ids) -> None:
        """Read the current versions of many resources of one type in one query, for the
        ``read`` calls to come (a replicated page reads every resource it writes)."""
        wanted = [rid for rid in dict.fromkeys(res_ids)
                  if (res_type, rid) not in self.pending and (res_type, rid) not in self.known]
        found = self.read_many(res_type, wanted)
        for rid in wanted:
            self.known[(res_type, rid)] = found.get(rid)

    # -- reads -------------------------------------------------------------------------
    def read(self, res_type: str, res_id: str) -> StoredVersion | None:
        """The current version (possibly a delete), or None if the resource never existed."""
        key = (res_type, res_id)
        if key in self.pending:
            return self.pending[key]
        if key in self.known:
            return self.known[key]
        if self.is_postgres:
            rows = driver.fetch_all(self.conn, READ_CURRENT_SQL, key)
            return row_to_version(VersionRow(*rows[0])) if rows else None
        cur, ver = resource_current, resource_version
        row = self.rows_conn.execute(
            select(ver).select_from(cur.join(ver, and_(ver.c.res_type == cur.c.res_type,
                                                       ver.c.res_id == cur.c.res_id,
                                                       ver.c.version == cur.c.version)))
            .where(cur.c.res_type == res_type, cur.c.res_id == res_id)).first()
        return row_to_version(row) if row else None

    def read_many(self, res_type: str, res_ids: list[str]) -> dict[str, StoredVersion]:
        """Current versions of several resources of one type in one query (search pages)."""
        out = {rid: self.pending[(res_type, rid)] for rid in res_ids if (res_type, rid) in self.pending}
        missing = [rid for rid in res_ids if rid not in out]
        cur, ver = resource_current, resource_version
        for start in range(0, len(missing), 500):
            chunk = missing[start:start + 500]
            rows = self.rows_conn.execute(
                select(ver).select_from(cur.join(ver, and_(ver.c.res_type == cur.c.res_type,
                                                           ver.c.res_id == cur.c.res_id,
                                                           ver.c.version == cur.c.version)))
                .where(cur.c.res_type == res_type, cur.c.res_id.in_(chunk)))
            for row in rows:
                out[row.res_id] = row_to_version(row)
        return out

    def vread(self, res_type: str, res_id: str, version: int) -> StoredVersion | None:
        pending = self.pending.get((res_type, res_id))
        if pending and pending.version == version:
            return pending
        ver = resource_version
        row = self.conn.execute(select(ver).where(ver.c.res_type == res_type, ver.c.res_id == res_id,
                                                  ver.c.version == version)).first()
        return row_to_version(row) if row else None

    def search_ids(self, res_type: str, criteria: list[tuple[str, str]]) -> list[str]:
        """Ids of current resources matching search criteria (for conditional operations);
        with a guard, only those its principal reaches (a match outside is not even told)."""
        if self.guard is not None:
            self.guard.check_criteria(res_type, criteria)
        return self._visible(res_type, self.indexer.find_ids(self.conn, res_type, criteria))

    def search_ids_many(self, searches: list[tuple[str, list[tuple[str, str]]]]) -> list[list[str]]:
        """``search_ids`` of several searches, in order (in fewer round trips where possible)."""
        find_many = getattr(self.indexer, "find_ids_many", None)
        if find_many is None:
            return [self.search_ids(res_type, criteria) for res_type, criteria in searches]
        if self.guard is not None:
            for res_type, criteria in searches:
                self.guard.check_criteria(res_type, criteria)
        found = find_many(self.conn, searches)
        return [self._visible(res_type, ids) for (res_type, _), ids in zip(searches, found)]

    def _visible(self, res_type: str, ids: list[str]) -> list[str]:
        if self.guard is None or not ids:
            return ids
        reached = self.guard.visible_ids(self, res_type, ids)
        return [i for i in ids if i in reached]

    # -- writes ------------------------------------------------------------------------
    def create(self, res_type: str, resource: dict, res_id: str | None = None,
               method: str = "POST") -> StoredVersion:
        """Create version 1 under a new server id, or under `res_id` (update-as-create)."""
        res_id = res_id or new_id()
        self.held.created.append((res_type, res_id))
        return self._record(res_type, res_id, 1, method, resource, created=True)

    def update(self, res_type: str, res_id: str, resource: dict, if_match: int | None = None,
               method: str = "PUT") -> StoredVersion:
        """Write a new version; update-as-create when the resource does not exist.

        When the content equals the current version's (ignoring meta.versionId and
        meta.lastUpdated) nothing is written: re-sending the same data is idempotent.
        """
        current = self.read(res_type, res_id)
        self.check_change(current, "u")
        if if_match is not None and (current is None or current.version != if_match):
            have = "does not exist" if current is None else f"is at version {current.version}"
            raise PreconditionFailed(f"If-Match expects version {if_match} but {res_type}/{res_id} {have}")
        if current is None:
            return self.create(res_type, resource, res_id, method)
        if not current.is_deleted and same_content(current.resource, resource):
            current.changed = False
            return current
        self._bump_version(current)
        return self._record(res_type, res_id, current.version + 1, method, resource,
                            created=current.is_deleted)

    def delete(self, res_type: str, res_id: str, if_match: int | None = None) -> StoredVersion | None:
        """Write a delete version; a resource already deleted or never created is left alone."""
        current = self.read(res_type, res_id)
        self.check_change(current, "d")
        if if_match is not None and (current is None or current.version != if_match):
            raise PreconditionFailed(f"If-Match expects version {if_match} of {res_type}/{res_id}")
        if current is None:
            return None
        if current.is_deleted:
            current.changed = False
            return current
        self._bump_version(current, is_deleted=True)
        return self._record(res_type, res_id, current.version + 1, "DELETE", None)

    def check_change(self, current: StoredVersion | None, letter: str) -> None:
        """The guard sees every update or delete of a live resource, even one that writes
        nothing (unchanged content), before anything about it is answered."""
        if self.guard is not None and current is not None and not current.is_deleted:
            self.guard.before_change(self, current.res_type, current.res_id, letter)

    def _bump_version(self, current: StoredVersion, is_deleted: bool = False) -> None:
        self.previous.setdefault((current.res_type, current.res_id), current.resource)
        # Compare-and-set: of two concurrent writers of one resource only one can move the
        # version from n to n+1; the other matches no row and gets a 409.
        if self.is_postgres:
            count = driver.run(self.conn, BUMP_VERSION_SQL, (current.version + 1, is_deleted, current.res_type,
                                                              current.res_id, current.version))
        else:
            cur = resource_current
            count = self.rows_conn.execute(
                update(cur).where(cur.c.res_type == current.res_type, cur.c.res_id == current.res_id,
                                  cur.c.version == current.version)
                .values(version=current.version + 1, is_deleted=is_deleted)).rowcount
        if count != 1:
            raise Conflict(f"{current.res_type}/{current.res_id} was changed by another request "
                           f"while this one was being processed; read it again and retry")

    def _record(self, res_type, res_id, version, method, resource, created=False) -> StoredVersion:
        stored = StoredVersion(res_type, res_id, version, method, is_deleted=resource is None,
                               resource=strip_server_meta(resource) if resource else None,
                               created=created)
        if stored.resource is not None:
            stored.resource["id"] = res_id
        # A brand-new resource (version 1) has no index rows to delete first.
        self.held.hold_index((res_type, res_id), version > 1, stored.resource)
        self.pending[(res_type, res_id)] = stored
        self.written.append(stored)
        return stored

    def write_held(self) -> None:
        """Send the held current rows and index changes: in one statement on PostgreSQL,
        in one statement a table on SQLite."""
        held, self.held = self.held, HeldWrites()
        dropped = [key for key, (drop, _) in held.index.items() if drop]
        if not self.is_postgres:
            if held.created:
                self.held.created = held.created
                self._insert_created()
            self.indexer.write_index_many(self._conn, dropped, [(key, resource) for key, (_, resource)
                                                                in held.index.items() if resource is not None])
            return
        rows_by_kind: dict[str, list[dict]] = {}
        for (res_type, res_id), (_, resource) in held.index.items():
            if resource is not None:
                for kind, rows in self.indexer.extract_index_rows(resource).items():
                    rows_by_kind.setdefault(kind, []).extend(self.indexer.owned_rows(res_type, res_id, rows))
        ctes, params = self.indexer.postgres_index_ctes(dropped, rows_by_kind)
        if held.created:
            ctes.insert(0, CREATE_CURRENT_CTE)
            params["created"] = driver.json_rows([{"t": t, "i": i} for t, i in held.created])
        if not ctes:
            return
        last = "SELECT res_type, res_id FROM created" if held.created else "SELECT NULL, NULL"
        inserted = set(driver.fetch_all(self._conn, "WITH " + ", ".join(ctes) + " " + last, params))
        for key in held.created:
            if key not in inserted:
                # Its index rows went in with the others: this unit of work must not commit.
                self.failed = created_concurrently(*key)
                raise self.failed

    def flush_versions(self) -> None:
        """Assign the change sequence and lastUpdated, then insert the version rows.

        The change counter's row lock taken here is held until commit, so this is the
        part of every write that concurrent writers queue for. On PostgreSQL it is one
        statement (counter, version rows, lastUpdated of the current rows) followed by the
        commit: under load, each extra round trip inside it was time every other writer
        waited while the holder's thread waited for a CPU (bench ingest: a third of the
        in-transaction backends sampled were waiting on this lock).
        """
        if self.failed is not None:
            raise self.failed
        versions = [v for v in self.written if v.seq == 0]
        if not versions:
            return
        now = self.clock()
        if self.conn.dialect.name == "postgresql":
            number_versions(versions, *self._flush_postgres(versions, now))
        else:
            number_versions(versions, *self._take_sequence(len(versions), now))
            self.conn.execute(resource_version.insert(), [version_row(stored) for stored in versions])
            self._stamp_current(versions, versions[0].last_updated_ms)
        if self.auditor is not None:  # after the counter's lock: one lock order for all writers
            self.auditor(self._conn, self.actor, versions, self.previous)
        for stored in versions:
            if stored.resource is not None:
                stored.resource = with_server_meta(stored.resource, stored.version, stored.last_updated_ms)

    def _flush_postgres(self, versions: list[StoredVersion], now: int) -> tuple[int, int]:
        rows = [version_row(stored) for stored in versions]
        params = {"now": now, "contents": [row.pop("content") for row in rows],
                  "versions": driver.json_rows(rows)}
        row = driver.fetch_all(self.conn, postgres_flush_sql(len(rows)), params)[0]
        return int(row[0]), int(row[1])

    def _take_sequence(self, count: int, now: int) -> tuple[int, int]:
        # The row lock taken here is held until commit: whoever takes it next commits after us.
        cc = change_counter
        row = self.conn.execute(
            update(cc).where(cc.c.id == 1)
            .values(value=cc.c.value + count,
                    last_ms=_greatest(cc.c.last_ms, now))
            .returning(cc.c.value, cc.c.last_ms)).one()
        return int(row.value), int(row.last_ms)

    def _stamp_current(self, versions: list[StoredVersion], now_ms: int) -> None:
        # One statement for all: it runs under the change-counter lock, so it is on the
        # critical path of every concurrent writer.
        cur = resource_current
        keys = sorted({(v.res_type, v.res_id) for v in versions})
        for start in range(0, len(keys), 500):
            self.conn.execute(update(cur).where(tuple_(cur.c.res_type, cur.c.res_id).in_(keys[start:start + 500]))
                              .values(last_updated_ms=now_ms))


def number_versions(versions: list[StoredVersion], last_seq: int, now_ms: int) -> None:
    """The versions of one commit take the counter's last values, in order, and one lastUpdated."""
    for offset, stored in enumerate(versions):
        stored.seq = last_seq - len(versions) + 1 + offset
        stored.last_updated_ms = now_ms


@functools.cache
def postgres_flush_sql(count: int) -> str:
    """Counter, version rows and the current rows' lastUpdated in one statement (see
    flush_versions). Version rows take seq = last value - count + their position, all the
    same lastUpdated. The count is in the text: the planner estimates a JSON set at 100 rows,
    and for 100 rows it stamped the current rows by scanning all of resource_current."""
    return f"""
WITH counter AS (
    UPDATE change_counter SET value = value + {int(count)}, last_ms = GREATEST(last_ms, %(now)s)
    WHERE id = 1 RETURNING value, last_ms),
v AS (
    SELECT * FROM ROWS FROM (
        json_to_recordset(%(versions)s::json) AS (res_type text, res_id text, version integer, method text,
                                                   is_deleted boolean),
        unnest(CAST(%(contents)s AS bytea[]))) WITH ORDINALITY AS v(res_type, res_id, version, method,
                                                                     is_deleted, content, ord)
    LIMIT {int(count)}),
versions AS (
    INSERT INTO resource_version (seq, res_type, res_id, version, last_updated_ms, method, is_deleted, content)
    SELECT counter.value - {int(count)} + v.ord, v.res_type, v.res_id, v.version, counter.last_ms, v.method,
           v.is_deleted, v.content
    FROM counter, v),
stamped AS (
    UPDATE resource_current SET last_updated_ms = counter.last_ms
    FROM counter, v
    WHERE resource_current.res_type = v.res_type AND resource_current.res_id = v.res_id)
SELECT value, last_ms FROM counter
"""


READ_CURRENT_SQL = """
SELECT v.seq, v.res_type, v.res_id, v.version, v.last_updated_ms, v.method, v.is_deleted, v.content
FROM resource_current c
JOIN resource_version v ON v.res_type = c.res_type AND v.res_id = c.res_id AND v.version = c.version
WHERE c.res_type = %s AND c.res_id = %s
"""

# Compare-and-set of the current version (see _bump_version).
BUMP_VERSION_SQL = """
UPDATE resource_current SET version = %s, is_deleted = %s WHERE res_type = %s AND res_id = %s AND version = %s
"""

# The current rows of held creates. A row another transaction holds makes this wait for it;
# if that one commits, ours is left out, and write_held reports the conflict.
CREATE_CURRENT_CTE = """created AS (
    INSERT INTO resource_current (res_type, res_id, version, is_deleted, last_updated_ms)
    SELECT k.t, k.i, 1, false, 0 FROM json_to_recordset(%(created)s::json) AS k(t text, i text)
    ON CONFLICT DO NOTHING RETURNING res_type, res_id)"""


class VersionRow(NamedTuple):
    """A resource_version row as the driver returns it (the columns of READ_CURRENT_SQL)."""

    seq: int
    res_type: str
    res_id: str
    version: int
    last_updated_ms: int
    method: str
    is_deleted: bool
    content: bytes | None


@dataclass
class HeldWrites:
    """What a unit of work has not sent yet: the current rows of new resources and, by
    resource, (whether to delete its old index rows, the content to index or None)."""

    created: list[tuple[str, str]] = field(default_factory=list)
    index: dict[tuple[str, str], tuple[bool, dict | None]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.created or self.index)

    def hold_index(self, key: tuple[str, str], drop_old: bool, resource: dict | None) -> None:
        earlier = self.index.get(key)
        self.index[key] = (drop_old or (earlier is not None and earlier[0]), resource)


def created_concurrently(res_type: str, res_id: str) -> Conflict:
    return Conflict(f"{res_type}/{res_id} was created concurrently by another request",
                    resource=(res_type, res_id))


def _greatest(column, value: int):
    from sqlalchemy import case
    return case((column < value, value), else_=column)


def strip_server_meta(resource: dict) -> dict:
    """A copy without meta.versionId/lastUpdated: the server owns those (http.html#update)."""
    out = dict(resource)
    meta = out.get("meta")
    if isinstance(meta, dict):
        meta = {k: v for k, v in meta.items() if k not in SERVER_META}
        if meta:
            out["meta"] = meta
        else:
            out.pop("meta")
    return out


def same_content(a: dict | None, b: dict | None) -> bool:
    if a is None or b is None:
        return False
    a, b = strip_server_meta(a), strip_server_meta(b)
    a.pop("id", None)
    b.pop("id", None)
    return a == b


def version_row(stored: StoredVersion) -> dict:
    """The row of a version. Its content leaves out meta.versionId and meta.lastUpdated: they
    are the row's own columns, put back by ``row_to_version`` (rows written before this
    carry them in the content as well, with the same values)."""
    return {"seq": stored.seq, "res_type": stored.res_type, "res_id": stored.res_id,
            "version": stored.version, "last_updated_ms": stored.last_updated_ms,
            "method": stored.method, "is_deleted": stored.is_deleted,
            "content": orjson.dumps(strip_server_meta(stored.resource)) if stored.resource is not None else None}


def with_server_meta(resource: dict, version: int, last_updated_ms: int) -> dict:
    """``resource`` with meta.versionId and meta.lastUpdated, laid out resourceType, id, meta, rest."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(last_updated_ms)
    return {"resourceType": resource["resourceType"], "id": resource["id"], "meta": meta,
            **{k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}}


def row_to_version(row) -> StoredVersion:
    resource = None
    if row.content is not None:
        resource = with_server_meta(orjson.loads(row.content), row.version, row.last_updated_ms)
    return StoredVersion(res_type=row.res_type, res_id=row.res_id, version=row.version,
                         method=row.method, is_deleted=bool(row.is_deleted), resource=resource,
                         seq=row.seq, last_updated_ms=row.last_updated_ms)
