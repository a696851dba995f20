"""Operator accounts of the authorization endpoint (SMART App Launch): who may sign in, with
which password, and the most a token for them may carry.

Plain functions on an engine, like the client registry: the CLI changes accounts, the
authorization endpoint checks passwords. Passwords are kept as Argon2id hashes (RFC 9106,
argon2-cffi's defaults) and re-hashed at sign-in when those defaults change. Every change is
recorded in ``auth_user_change`` in the transaction that makes it - never a password or hash.
"""
from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from ..store.engine import WRITE_OPTION
from .clients import FHIR_ID
from .schema import auth_refresh_token, auth_user, auth_user_change
from .scopes import parse_scopes

USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@\-]{0,63}\Z")
FHIR_USER = re.compile(r"^(Practitioner|Patient|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}\Z")
MIN_PASSWORD = 12  # NIST SP 800-63B allows 8; an operator account reaches every patient
MAX_PASSWORD = 1024  # hashing cost grows with length: bounded
USER_CONTEXTS = ("user", "patient")


class UserError(ValueError):
    """An account change that cannot be made; the message says why."""


@dataclass
class User:
    username: str
    scopes: str = "user/*.rs"
    patients: list[str] = field(default_factory=list)
    fhir_user: str | None = None
    disabled: bool = False

    def describe(self) -> dict:
        return {"username": self.username, "scopes": self.scopes, "patients": self.patients,
                "fhir_user": self.fhir_user, "disabled": self.disabled}


@functools.cache
def hasher() -> PasswordHasher:
    return PasswordHasher()  # Argon2id, RFC 9106 low-memory profile (t=3, 64 MiB, p=4)


@functools.cache
def decoy_hash() -> str:
    """Verified against when the user does not exist, so that a wrong name costs what a
    wrong password costs (no user enumeration by timing)."""
    return hasher().hash("fhirimg decoy password, never valid")


def check_user(user: User) -> None:
    if not USERNAME.match(user.username):
        raise UserError("user name: 1-64 of a-z 0-9 . _ @ - (lower case), starting with a letter or digit")
    parsed = parse_scopes(user.scopes)
    if parsed.rejected:
        raise UserError("scopes: " + "; ".join(f"{s}: {why}" for s, why in parsed.rejected))
    if parsed.other:
        raise UserError(f"scopes: {' '.join(parsed.other)} are the client's to ask for; a user's scopes are "
                        "resource scopes (user/...)")
    if not parsed.scopes or any(s.context not in USER_CONTEXTS for s in parsed.scopes):
        raise UserError("scopes: at least one, all user/... (or patient/... with one --patient), e.g. user/*.rs")
    if any(s.context == "patient" for s in parsed.scopes) and len(user.patients) != 1:
        raise UserError("patient/ scopes need exactly one --patient: it becomes the launch's patient context")
    for value in user.patients:
        if not FHIR_ID.match(value):
            raise UserError(f"{value!r} is not a Patient id")
    if user.fhir_user is not None and not FHIR_USER.match(user.fhir_user):
        raise UserError("fhir user: Practitioner/ID, Patient/ID, RelatedPerson/ID or Person/ID")


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"the password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD or "\x00" in password:
        raise UserError(f"the password may have at most {MAX_PASSWORD} characters and no NUL")


def _from_row(row) -> User:
    return User(row.username, row.scopes, row.patients.split(), row.fhir_user, bool(row.disabled))


def _record(conn, username: str, action: str, actor: str, details: dict, now_ms: int) -> None:
    conn.execute(insert(auth_user_change).values(username=username, action=action, actor=actor, at_ms=now_ms,
                                                 details=json.dumps(details, sort_keys=True)))


def _writing(engine: Engine):
    return engine.connect().execution_options(**{WRITE_OPTION: True})


def add_user(engine: Engine, user: User, password: str | None, actor: str, replace: bool = False) -> User:
    """Create an account (a password is required), or with `replace` change its scopes,
    patients and fhirUser (and its password when one is given)."""
    check_user(user)
    if password is not None:
        check_password(password)
    elif not replace:
        raise UserError("a new user needs a password")
    hashed = hasher().hash(password) if password is not None else None
    now_ms = int(time.time() * 1000)
    values = {"scopes": user.scopes, "patients": " ".join(user.patients), "fhir_user": user.fhir_user,
              "updated_ms": now_ms}  # --replace keeps the account's enabled/disabled state
    with _writing(engine) as conn, conn.begin():
        exists = conn.execute(select(auth_user.c.username).where(auth_user.c.username == user.username)).first()
        if exists and not replace:
            raise UserError(f"user {user.username!r} exists (use --replace to change it)")
        if exists:
            conn.execute(update(auth_user).where(auth_user.c.username == user.username)
                         .values(**values, **({"password_hash": hashed} if hashed else {})))
        elif hashed is None:
            raise UserError(f"no user {user.username!r}: a new user needs a password")
        else:
            conn.execute(insert(auth_user).values(username=user.username, password_hash=hashed,
                                                  disabled=user.disabled, created_ms=now_ms, **values))
        _record(conn, user.username, "update" if exists else "add", actor,
                {**user.describe(), "password_set": hashed is not None}, now_ms)
        if exists:  # what a refresh token carries was granted under the old settings
            conn.execute(delete(auth_refresh_token).where(auth_refresh_token.c.username == user.username))
    return user


def get_user(engine: Engine, username: str) -> User | None:
    with engine.connect() as conn:
        row = conn.execute(select(auth_user).where(auth_user.c.username == username)).first()
    return _from_row(row) if row else None


def list_users(engine: Engine) -> list[User]:
    with engine.connect() as conn:
        return [_from_row(r) for r in conn.execute(select(auth_user).order_by(auth_user.c.username))]


def _change(engine: Engine, username: str, action: str, actor: str, values: dict | None) -> None:
    """One change to an existing account (values None: delete it); its refresh tokens go."""
    now_ms = int(time.time() * 1000)
    with _writing(engine) as conn, conn.begin():
        where = auth_user.c.username == username
        statement = delete(auth_user).where(where) if values is None else \
            update(auth_user).where(where).values(**values, updated_ms=now_ms)
        if not conn.execute(statement).rowcount:
            raise UserError(f"no user {username!r}")
        conn.execute(delete(auth_refresh_token).where(auth_refresh_token.c.username == username))
        _record(conn, username, action, actor, {}, now_ms)


def set_user_disabled(engine: Engine, username: str, disabled: bool, actor: str) -> None:
    """Refuse (or allow again) sign-in; a disabled user's refresh tokens are revoked, and
    access tokens already issued expire within auth.token_lifetime."""
    _change(engine, username, "disable" if disabled else "enable", actor, {"disabled": disabled})


def set_password(engine: Engine, username: str, password: str, actor: str) -> None:
    check_password(password)
    _change(engine, username, "passwd", actor, {"password_hash": hasher().hash(password)})


def remove_user(engine: Engine, username: str, actor: str) -> None:
    """Delete an account (its change log stays)."""
    _change(engine, username, "remove", actor, None)


def user_changes(engine: Engine, username: str) -> list[dict]:
    t = auth_user_change
    with engine.connect() as conn:
        rows = conn.execute(select(t).where(t.c.username == username).order_by(t.c.id)).all()
    return [{"action": r.action, "actor": r.actor, "at_ms": r.at_ms, "details": json.loads(r.details)} for r in rows]


@dataclass
class SignIn:
    """What a password check found: the user (None: refused) and, when refused, why (for
    the audit trail only: the person signing in is told nothing more than "wrong")."""

    user: User | None
    reason: str = ""


def verify_password(engine: Engine, username: str, password: str) -> SignIn:
    """Check a password. An unknown user, a wrong password and a disabled account cost the
    same Argon2 verification and look the same to the caller."""
    with engine.connect() as conn:
        row = conn.execute(select(auth_user).where(auth_user.c.username == username)).first() \
            if USERNAME.match(username) else None
    stored = row.password_hash if row is not None else decoy_hash()
    try:
        hasher().verify(stored, password[:MAX_PASSWORD])
        matched = row is not None
    except (VerificationError, InvalidHashError):
        matched = False
    if row is None:
        return SignIn(None, "unknown user")
    if not matched:
        return SignIn(None, "wrong password")
    if row.disabled:
        return SignIn(None, "account disabled")
    if hasher().check_needs_rehash(stored):
        rehash(engine, username, stored, password)
    return SignIn(_from_row(row))


def rehash(engine: Engine, username: str, old_hash: str, password: str) -> None:
    """The hashing parameters changed since this password was set: store it hashed anew
    (only if the hash is still the one verified: a password changed meanwhile wins)."""
    now_ms = int(time.time() * 1000)
    with _writing(engine) as conn, conn.begin():
        done = conn.execute(update(auth_user).where(auth_user.c.username == username,
                                                    auth_user.c.password_hash == old_hash)
                            .values(password_hash=hasher().hash(password), updated_ms=now_ms)).rowcount
        if done:
            _record(conn, username, "rehash", "sign-in", {}, now_ms)
