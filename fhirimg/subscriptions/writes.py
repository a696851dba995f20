"""What a client's write of a Subscription does besides storing it (in the same transaction).

Called by the request's write guard before commit: the status rule (validate.py), and the
subscription's state row: who it acts for (the writer's token), and - for a new
subscription, or one re-created after a delete - counters from zero and no events. A
client that sets ``requested`` again (re-activating one in error) gets a new handshake and
delivery resumes from the first event not yet delivered.
"""
from __future__ import annotations

from sqlalchemy import delete, func, insert, select, update

from ..errors import Unprocessable
from ..store.schema import resource_current
from .grants import grant_values
from .schema import subscription_event, subscription_state
from .validate import check_status_change


def subscription_written(uow, stored, principal, max_subscriptions: int) -> None:
    conn = uow.conn
    st = subscription_state
    if stored.is_deleted:
        return  # kept: its events stay readable until retention; a re-create starts afresh
    check_status_change(uow.previous.get(("Subscription", stored.res_id)), stored.resource)
    values = grant_values(principal)
    exists = conn.execute(select(st.c.sub_id).where(st.c.sub_id == stored.res_id)).first() is not None
    if stored.created or not exists:
        check_room(conn, max_subscriptions)
        conn.execute(delete(subscription_event).where(subscription_event.c.sub_id == stored.res_id))
        conn.execute(delete(st).where(st.c.sub_id == stored.res_id))
        conn.execute(insert(st).values(sub_id=stored.res_id, events=0, delivered=0, started_seq=None,
                                       handshake_version=None, next_attempt_ms=0, attempts=0, **values))
        return
    if stored.resource.get("status") == "requested":
        values.update(handshake_version=None, next_attempt_ms=0, attempts=0, failing_since_ms=None)
    conn.execute(update(st).where(st.c.sub_id == stored.res_id).values(**values))


def check_room(conn, max_subscriptions: int) -> None:
    cur = resource_current
    count = conn.execute(select(func.count()).select_from(cur).where(
        cur.c.res_type == "Subscription", cur.c.is_deleted.is_(False))).scalar()
    if count > max_subscriptions:  # this one is counted already (its current row is written)
        raise Unprocessable(f"this server holds at most {max_subscriptions} subscriptions "
                            "(subscriptions.max_subscriptions)", code="too-costly", expression=["Subscription"])
