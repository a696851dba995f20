"""`fhirimg replicate status`: each link's cursor, lag, changes behind and last error.

*Behind* is the number of changes committed on the sending side and not yet applied on
the receiving side; *lag* is the age of the oldest of them (0 when none). For a push
link both come from the local database; for a pull link from the source, asked for the
size of the history after the saved cursor (``_total=accurate``); when the source cannot
be reached, the age of the last moment the link was known to be caught up is shown.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from sqlalchemy import func, select

from ..store.schema import resource_version
from .client import PeerClient, PeerError, RetryPolicy
from .links import LinkState, all_states, recent_events
from .pull import with_params
from .settings import Link


@dataclass
class LinkStatus:
    name: str
    direction: str
    url: str
    cursor: str | None
    behind: int | None
    lag_seconds: float | None
    applied: int
    skipped: int
    conflicts: int
    rejected: int
    last_success: str | None
    last_error: str | None
    last_error_at: str | None
    recent_events: list[dict]

    def to_json(self) -> dict:
        return asdict(self)


def link_statuses(engine, links: dict[str, Link], policy: RetryPolicy, live: bool = True,
                  now: float | None = None) -> list[LinkStatus]:
    now = now if now is not None else time.time()
    out = []
    for state in all_states(engine):
        link = links.get(state.name) or Link(state.name, state.direction, state.url)
        if state.direction == "push":
            behind, lag = push_backlog(engine, state, link, now)
        else:
            behind, lag = pull_backlog(state, link, policy, now) if live else (None, None)
            if lag is None and state.caught_up_ms:
                lag = round(now - state.caught_up_ms / 1000, 3)
        out.append(LinkStatus(state.name, state.direction, state.url, state.cursor, behind, lag, state.applied,
                              state.skipped, state.conflicts, state.rejected, _instant(state.last_success_ms),
                              state.last_error, _instant(state.last_error_ms),
                              [{"kind": e["kind"], "detail": e["detail"], "at": _instant(e["at_ms"])}
                               for e in recent_events(engine, state.name)]))
    seen = {row.name for row in out}
    for name, link in links.items():
        if name not in seen:  # configured, but no run has reached the database yet
            out.append(LinkStatus(name, link.direction, link.url, None, None, None, 0, 0, 0, 0, None,
                                  "never ran" if link.enabled else "disabled", None, []))
    return out


def push_backlog(engine, state: LinkState, link: Link, now: float) -> tuple[int, float]:
    rv = resource_version
    after = int(state.cursor or 0)
    conditions = [rv.c.seq > after] + ([rv.c.res_type.in_(link.types)] if link.types else [])
    with engine.connect() as conn:
        count, oldest = conn.execute(select(func.count(), func.min(rv.c.last_updated_ms)).where(*conditions)).one()
    return int(count), (round(max(0.0, now - oldest / 1000), 3) if oldest else 0.0)


def pull_backlog(state: LinkState, link: Link, policy: RetryPolicy, now: float) -> tuple[int | None, float | None]:
    if not state.cursor:
        return None, None
    quick = RetryPolicy(max_attempts=1, connect_timeout=min(policy.connect_timeout, 3.0), read_timeout=10.0)
    client = PeerClient(link, quick)
    try:
        bundle = client.get_bundle(with_params(state.cursor, _count="1", _total="accurate"))
    except PeerError:
        return None, None
    finally:
        client.close()
    total = bundle.get("total") if isinstance(bundle, dict) else None
    entries = bundle.get("entry") or [] if isinstance(bundle, dict) else []
    if not entries:
        return (total if isinstance(total, int) else 0), 0.0
    from .apply import _ms_of
    oldest = _ms_of((entries[0].get("response") or {}).get("lastModified"))
    return (total if isinstance(total, int) else None), (round(max(0.0, now - oldest / 1000), 3) if oldest else None)


def _instant(ms: int | None) -> str | None:
    from ..store.records import format_instant
    return format_instant(ms) if ms else None


def format_status(rows: list[LinkStatus]) -> str:
    if not rows:
        return "no replication link has run yet"
    lines = []
    for r in rows:
        behind = "?" if r.behind is None else str(r.behind)
        lag = "?" if r.lag_seconds is None else f"{r.lag_seconds:.1f}s"
        lines.append(f"{r.name}  {r.direction} {r.url}")
        lines.append(f"  behind {behind} changes, lag {lag}; applied {r.applied}, skipped {r.skipped}, "
                     f"conflicts {r.conflicts}, rejected {r.rejected}; last success {r.last_success or '-'}")
        lines.append(f"  cursor {r.cursor or '(start)'}")
        if r.last_error:
            lines.append(f"  LAST ERROR at {r.last_error_at}: {r.last_error}")
        for event in r.recent_events:
            lines.append(f"  {event['kind']} at {event['at']}: {event['detail']}")
    return "\n".join(lines)
