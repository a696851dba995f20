"""The client registry: who may ask the built-in server for tokens, with which keys, scopes
and (for App Launch) redirect URIs.

Plain functions on an engine (the CLI and the token endpoint call them). Every change is
recorded in ``auth_client_change`` in the same transaction as the change itself. A public
client (a browser app: it cannot keep a secret) has no key; it is known by its registered
redirect URIs, where alone its authorization codes are sent (app-launch.html, "public").
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from ..store.engine import WRITE_OPTION
from ..transfer.netpolicy import is_loopback_name
from .schema import auth_client, auth_client_change, auth_client_redirect
from .scopes import parse_scopes

CLIENT_ID = re.compile(r"^[A-Za-z0-9._~\-]{1,128}\Z")
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}\Z")
MAX_JWKS_BYTES = 64 * 1024
MAX_REDIRECT_URI = 2000
log = logging.getLogger("fhirimg.auth")


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
    public: bool = False  # no key: a browser app (App Launch only)
    redirect_uris: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], "") and not (k == "public" and not v)}


def check_client(client: Client) -> None:
    if not CLIENT_ID.match(client.client_id):
        raise ClientError("client_id: 1-128 of A-Z a-z 0-9 . _ ~ -")
    if client.public:
        if client.jwks or client.jwks_url:
            raise ClientError("a public client has no key (leave out --jwks, --jwks-url and --key)")
        if not client.redirect_uris:
            raise ClientError("a public client needs at least one --redirect-uri")
    elif bool(client.jwks) == bool(client.jwks_url):
        raise ClientError("give exactly one of a JWKS (inline) and a JWKS URL (or --public for a browser app)")
    for uri in client.redirect_uris:
        check_redirect_uri(uri)
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


def check_redirect_uri(uri: str) -> None:
    """A redirect URI as RFC 6749 §3.1.2 and the OAuth security BCP want it: absolute, no
    fragment, no wildcard, https (http only to this machine, RFC 8252 §7.3); or a path on
    this server's own origin (``/console/callback``), which follows its base URL."""
    if not uri or len(uri) > MAX_REDIRECT_URI or any(c.isspace() or ord(c) < 32 or c in "*\\" for c in uri):
        raise ClientError(f"redirect URI {uri[:80]!r}: no spaces, control characters, '*' or '\\', "
                          f"at most {MAX_REDIRECT_URI} characters")
    if "#" in uri:
        raise ClientError(f"redirect URI {uri!r} has a fragment (RFC 6749 §3.1.2)")
    if uri.startswith("/"):
        if uri.startswith("//") or "/../" in uri + "/" or "/./" in uri + "/":
            raise ClientError(f"redirect URI {uri!r}: a path on this server, without // . or ..")
        return
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ClientError(f"redirect URI {uri!r} is not an absolute http(s) URL (or a path such as /app/callback)")
    if parts.username or parts.password:
        raise ClientError(f"redirect URI {uri!r} carries credentials")
    if parts.scheme == "http" and not is_loopback_name(parts.hostname):
        raise ClientError(f"redirect URI {uri!r}: http only to loopback (127.0.0.1, [::1], localhost); "
                          "use https")


def redirect_matches(client: Client, uri: str, own_origin: str) -> bool:
    """Exact string comparison (no prefix, no pattern): a registered path stands for the same
    path on this server's origin (``own_origin``, computed as for tokens, never from Host)."""
    return any(uri == (own_origin + registered if registered.startswith("/") else registered)
               for registered in client.redirect_uris)


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


def _from_row(row, redirect_uris: list[str]) -> Client:
    return Client(row.client_id, row.name, row.scopes, json.loads(row.jwks) if row.jwks else None,
                  row.jwks_url, row.patients.split(), row.organizations.split(), bool(row.disabled),
                  public=not (row.jwks or row.jwks_url), redirect_uris=redirect_uris)


def _redirects(conn, client_ids: list[str] | None = None) -> dict[str, list[str]]:
    query = select(auth_client_redirect).order_by(auth_client_redirect.c.redirect_uri)
    if client_ids is not None:
        query = query.where(auth_client_redirect.c.client_id.in_(client_ids))
    out: dict[str, list[str]] = {}
    for row in conn.execute(query):
        out.setdefault(row.client_id, []).append(row.redirect_uri)
    return out


def _write_redirects(conn, client: Client) -> None:
    conn.execute(delete(auth_client_redirect).where(auth_client_redirect.c.client_id == client.client_id))
    for uri in dict.fromkeys(client.redirect_uris):
        conn.execute(insert(auth_client_redirect).values(client_id=client.client_id, redirect_uri=uri))


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
        _write_redirects(conn, client)
        _record(conn, client.client_id, "update" if exists else "add", actor, client.describe(), now_ms)
    return client


def get_client(engine: Engine, client_id: str) -> Client | None:
    with engine.connect() as conn:
        row = conn.execute(select(auth_client).where(auth_client.c.client_id == client_id)).first()
        return _from_row(row, _redirects(conn, [client_id]).get(client_id, [])) if row else None


def list_clients(engine: Engine) -> list[Client]:
    with engine.connect() as conn:
        redirects = _redirects(conn)
        return [_from_row(r, redirects.get(r.client_id, []))
                for r in conn.execute(select(auth_client).order_by(auth_client.c.client_id))]


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
        conn.execute(delete(auth_client_redirect).where(auth_client_redirect.c.client_id == client_id))
        _record(conn, client_id, "remove", actor, {}, now_ms)


def client_changes(engine: Engine, client_id: str) -> list[dict]:
    t = auth_client_change
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.client_id == client_id).order_by(t.c.id)).all()
    return [{"action": r.action, "actor": r.actor, "at_ms": r.at_ms, "details": json.loads(r.details)}
            for r in rows]


# -- the browser apps served with fhirimg ----------------------------------------------------------
# Registered at start when missing, so `make run` needs no setup; an operator's change to
# them (scopes, redirect URIs, disable) is kept. Their redirect URIs are paths: they follow
# this server's origin, whatever base_url says. A user's own scopes narrow what they get.
BUILTIN_CLIENTS = (
    Client("fhirimg-console", "fhirimg console", "openid fhirUser profile online_access user/*.cruds",
           public=True, redirect_uris=["/console/callback"]),
    Client("fhirimg-viewer", "OHIF Viewer", "openid fhirUser profile online_access user/*.rs",
           public=True, redirect_uris=["/viewer/callback"]),
)


def ensure_builtin_clients(engine: Engine, actor: str = "fhirimg start") -> list[str]:
    """Register the built-in public clients that do not exist (idempotent; several worker
    processes starting at once are fine). Returns the ids registered now."""
    with engine.connect() as conn:
        present = {r.client_id for r in conn.execute(select(auth_client.c.client_id).where(
            auth_client.c.client_id.in_([c.client_id for c in BUILTIN_CLIENTS])))}
    made = []
    for client in BUILTIN_CLIENTS:
        if client.client_id in present:
            continue
        try:
            add_client(engine, Client(**asdict(client)), actor)
        except (ClientError, IntegrityError):  # another worker registered it first
            continue
        log.info("registered the built-in public client %s (redirect %s)", client.client_id,
                 ", ".join(client.redirect_uris))
        made.append(client.client_id)
    return made
