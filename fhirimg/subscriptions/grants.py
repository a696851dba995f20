"""Who a subscription acts for, then and now.

When a client writes a Subscription, the scopes and patient context of its token are kept
beside it (``subscription_state``). Every event and every payload is then decided with a
principal rebuilt from them *and the client's registration as it is now*: a client that is
disabled or removed hears nothing more, and one whose registration no longer lists a
patient stops hearing about that patient, although the token it subscribed with said
otherwise. (Tokens from another issuer are not in the registry; their scopes as granted
then are all there is.)
"""
from __future__ import annotations

from sqlalchemy import select

from ..auth.decision import readable, version_in_reach
from ..auth.principal import Principal, anonymous_principal
from ..auth.schema import auth_client
from ..auth.scopes import parse_scopes


def grant_values(principal: Principal) -> dict:
    """The columns of subscription_state that say who the subscription acts for."""
    return {"client_id": principal.client_id[:128], "scopes": principal.scopes.text(), "patient": principal.patient,
            "issuer": (principal.issuer or "")[:1024], "anonymous": bool(principal.anonymous)}


def subscriber(conn, state, registrations: dict | None = None) -> Principal:
    """The principal of a subscription_state row, with the client's registration of now
    (`registrations`: those of ``registrations_of``, read once for many subscriptions)."""
    if state.anonymous:
        return anonymous_principal()
    principal = Principal(state.client_id, parse_scopes(state.scopes), issuer=state.issuer, patient=state.patient)
    if registrations is None:
        registrations = registrations_of(conn, [state.client_id])
    row = registrations.get(state.client_id)
    if row is None:
        return principal
    if row.disabled:
        return Principal(state.client_id, parse_scopes(""), issuer=state.issuer)
    principal.patients = tuple(row.patients.split())
    principal.organizations = tuple(row.organizations.split())
    return principal


def registrations_of(conn, client_ids) -> dict:
    """client_id -> (disabled, patients, organizations) of the registered ones among them."""
    ids = sorted(set(client_ids))
    if not ids:
        return {}
    query = select(auth_client.c.client_id, auth_client.c.disabled, auth_client.c.patients,
                   auth_client.c.organizations).where(auth_client.c.client_id.in_(ids))
    return {row.client_id: row for row in conn.execute(query)}


def may_read(conn, principal: Principal, res_type: str, res_id: str, resource: dict | None) -> bool:
    """Whether `principal` may read this version of the resource (a delete: the type at all)."""
    accesses = readable(principal, res_type)
    if not accesses:
        return False
    if resource is None or any(not a.is_narrowed for a in accesses):
        return True
    return any(version_in_reach(conn, a, res_type, res_id, resource) for a in accesses)
