"""The client registry: who may ask the built-in server for tokens, with which keys and scopes.

Plain functions on an engine (the CLI and the token endpoint call them). Every change is
recorded in ``auth_client_change`` in the same transaction as the change itself.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from ..store.engine import WRITE_OPTION
from .schema import auth_client, auth_client_change
from .scopes import parse_scopes

CLIENT_ID = re.compile(r"^[A-Za-z0-9._~\-]{1,128}\Z")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
MAX_JWKS_BYTES = 64 * 1024


class ClientError(ValueError):
    """A registration that cannot be accepted; the message says which field and why."""


@dataclass
class Client:
    client_id: str
    name: str
    scopes: str
    jwks: dict | None = None
    jwks_url: str | None = None
    patients: list[str] = field(default_factory=list)
    organizations: list[str] = field(default_factory=list)
    disabled: bool = False

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], "")}


def check_client(client: Client) -> None:
    if not CLIENT_ID.match(client.client_id):
        raise ClientError("client_id: 1-128 of A-Z a-z 0-9 . _ ~ -")
    if bool(client.jwks) == bool(client.jwks_url):
        raise ClientError("give exactly one of a JWKS (inline) and a JWKS URL")
    if client.jwks_url and not re.match(r"^https?://\S+$", client.jwks_url):
        raise ClientError("jwks_url must be an http(s) URL")
    if client.jwks is not None:
        check_public_jwks(client.jwks)
    parsed = parse_scopes(client.scopes)
    if parsed.rejected:
        raise ClientError("scopes: " + "; ".join(f"{s}: {why}" for s, why in parsed.rejected))
    if not parsed.scopes:
        raise ClientError("scopes: at least one resource scope, e.g. system/*.rs")
    for value in client.patients + client.organizations:
        if not FHIR_ID.match(value):
            raise ClientError(f"{value!r} is not a resource id")


def check_public_jwks(jwks: dict) -> None:
    """Public keys only, each with a kid: a private key in a registry is a leaked key."""
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ClientError("jwks must be a JWK Set: {\"keys\": [...]}")
    if len(json.dumps(jwks)) > MAX_JWKS_BYTES:
        raise ClientError(f"jwks larger than {MAX_JWKS_BYTES} bytes")
    for key in keys:
        if not isinstance(key, dict) or key.get("kty") not in ("RSA", "EC") or not key.get("kid"):
            raise ClientError("every key needs kty RSA or EC and a kid")
        if any(private in key for private in ("d", "p", "q", "dp", "dq", "qi")):
            raise ClientError(f"key {key.get('kid')!r} contains private parameters; register the public key")


def _row_values(client: Client) -> dict:
    return {"name": client.name, "scopes": client.scopes,
            "jwks": json.dumps(client.jwks) if client.jwks is not None else None,
            "jwks_url": client.jwks_url or None, "patients": " ".join(client.patients),
            "organizations": " ".join(client.organizations), "disabled": client.disabled}


def _from_row(row) -> Client:
    return Client(row.client_id, row.name, row.scopes, json.loads(row.jwks) if row.jwks else None,
                  row.jwks_url, row.patients.split(), row.organizations.split(), bool(row.disabled))


def _record(conn, client_id: str, action: str, actor: str, details: dict, now_ms: int) -> None:
    conn.execute(insert(auth_client_change).values(client_id=client_id, action=action, actor=actor,
                                                   at_ms=now_ms, details=json.dumps(details, sort_keys=True)))


def add_client(engine: Engine, client: Client, actor: str, replace: bool = False) -> Client:
    check_client(client)
    now_ms = int(time.time() * 1000)
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        exists = conn.execute(select(auth_client.c.client_id)
                              .where(auth_client.c.client_id == client.client_id)).first()
        if exists and not replace:
            raise ClientError(f"client {client.client_id!r} exists (use --replace to change it)")
        if exists:
            conn.execute(update(auth_client).where(auth_client.c.client_id == client.client_id)
                         .values(**_row_values(client), updated_ms=now_ms))
        else:
            conn.execute(insert(auth_client).values(client_id=client.client_id, **_row_values(client),
                                                    created_ms=now_ms, updated_ms=now_ms))
        _record(conn, client.client_id, "update" if exists else "add", actor, client.describe(), now_ms)
    return client


def get_client(engine: Engine, client_id: str) -> Client | None:
    with engine.connect() as conn:
        row = conn.execute(select(auth_client).where(auth_client.c.client_id == client_id)).first()
    return _from_row(row) if row else None


def list_clients(engine: Engine) -> list[Client]:
    with engine.connect() as conn:
        return [_from_row(r) for r in conn.execute(select(auth_client).order_by(auth_client.c.client_id))]


def set_disabled(engine: Engine, client_id: str, disabled: bool, actor: str) -> None:
    now_ms = int(time.time() * 1000)
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        done = conn.execute(update(auth_client).where(auth_client.c.client_id == client_id)
                            .values(disabled=disabled, updated_ms=now_ms)).rowcount
        if not done:
            raise ClientError(f"no client {client_id!r}")
        _record(conn, client_id, "disable" if disabled else "enable", actor, {}, now_ms)


def remove_client(engine: Engine, client_id: str, actor: str) -> None:
    now_ms = int(time.time() * 1000)
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
        done = conn.execute(delete(auth_client).where(auth_client.c.client_id == client_id)).rowcount
        if not done:
            raise ClientError(f"no client {client_id!r}")
        _record(conn, client_id, "remove", actor, {}, now_ms)


def client_changes(engine: Engine, client_id: str) -> list[dict]:
    t = auth_client_change
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.client_id == client_id).order_by(t.c.id)).all()
    return [{"action": r.action, "actor": r.actor, "at_ms": r.at_ms, "details": json.loads(r.details)}
            for r in rows]
