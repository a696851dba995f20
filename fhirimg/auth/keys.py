"""The server's own signing keys: made on first use, rotated, published at ``/auth/jwks``.

Keys live in the database so that every node signs and verifies with the same set. The
newest key of an algorithm signs; a key stays published (and trusted) for `rotation` after
its successor appeared plus the longest token lifetime, then it is deleted. Access tokens
are signed ES256; OpenID Connect id_tokens RS256, which SMART's sso-openid-connect requires
(and which the resource server never accepts as an access token).
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from ..store.engine import WRITE_OPTION
from .schema import auth_signing_key

# P-256: a key is made in ~1 ms (an RSA key in ~50-100 ms, paid by every fresh database),
# a token verified in ~60 us, and a verified token is cached until it expires.
SIGNING_ALG = "ES256"
ID_TOKEN_ALG = "RS256"
KEY_REFRESH_SECONDS = 60.0
UNKNOWN_KID_COOLDOWN = 5.0


@dataclass
class SigningKey:
    kid: str
    alg: str
    private_key: object
    public_key: object
    public_jwk: dict
    created_ms: int


class KeyRing:
    """The keys of this deployment, read from the database and cached in the process."""

    def __init__(self, engine: Engine, rotation_seconds: float, lifetime_seconds: int, clock=time.time):
        self.engine = engine
        self.rotation_ms = int(rotation_seconds * 1000)
        self.lifetime_ms = lifetime_seconds * 1000
        self.clock = clock
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at = -1e18
        self._unknown_at = -1e18
        self._lock = threading.Lock()

    def signing_key(self, alg: str = SIGNING_ALG) -> SigningKey:
        """The newest key of `alg`; a new one is made when it is older than the rotation period."""
        self._refresh_if_stale()
        now_ms = int(self.clock() * 1000)
        newest = self._newest(alg)
        if newest is None or now_ms - newest.created_ms >= self.rotation_ms:
            self._rotate(now_ms, alg)
            newest = self._newest(alg)
        return newest

    def _newest(self, alg: str) -> SigningKey | None:
        return max((k for k in self._keys.values() if k.alg == alg), key=lambda k: k.created_ms, default=None)

    def verification_key(self, kid: str):
        """The public key named `kid`, reloading once (with a cooldown) if it is unknown."""
        self._refresh_if_stale()
        key = self._keys.get(kid)
        if key is None and self.clock() - self._unknown_at >= UNKNOWN_KID_COOLDOWN:
            self._unknown_at = self.clock()
            self._load()
            key = self._keys.get(kid)
        return key.public_key if key is not None else None

    def public_jwks(self) -> dict:
        self._refresh_if_stale()
        for alg in (SIGNING_ALG, ID_TOKEN_ALG):  # published before the first token an app checks
            if self._newest(alg) is None:
                self.signing_key(alg)
        return {"keys": [k.public_jwk for k in sorted(self._keys.values(), key=lambda k: -k.created_ms)]}

    def _refresh_if_stale(self) -> None:
        if self.clock() - self._loaded_at >= KEY_REFRESH_SECONDS:
            self._load()

    def _load(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(select(auth_signing_key)).all()
        keys = {}
        for row in rows:
            private = self._keys[row.kid].private_key if row.kid in self._keys else \
                serialization.load_pem_private_key(row.private_pem, password=None)
            keys[row.kid] = SigningKey(row.kid, row.alg, private, private.public_key(),
                                       json.loads(row.public_jwk), row.created_ms)
        with self._lock:
            self._keys = keys
            self._loaded_at = self.clock()

    def _rotate(self, now_ms: int, alg: str = SIGNING_ALG) -> None:
        if alg == ID_TOKEN_ALG:
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
        else:
            private = ec.generate_private_key(ec.SECP256R1())
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
        kid = uuid.uuid4().hex
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        # Keys whose successor is older than the longest token lifetime sign nothing that is
        # still valid: drop them (keep at least the two newest).
        with self.engine.connect().execution_options(**{WRITE_OPTION: True}) as conn, conn.begin():
            conn.execute(insert(auth_signing_key).values(kid=kid, alg=alg, private_pem=pem,
                                                         public_jwk=json.dumps(jwk), created_ms=now_ms))
            rows = conn.execute(select(auth_signing_key.c.kid, auth_signing_key.c.created_ms)
                                .where(auth_signing_key.c.alg == alg)
                                .order_by(auth_signing_key.c.created_ms.desc())).all()
            for older, newer in zip(rows[2:], rows[1:]):
                if now_ms - newer.created_ms > self.lifetime_ms + 60_000:
                    conn.execute(delete(auth_signing_key).where(auth_signing_key.c.kid == older.kid))
        self._load()

    def sign(self, claims: dict, alg: str = SIGNING_ALG, typ: str = "at+jwt") -> str:
        """An access token (RFC 9068 ``at+jwt``), or with ``typ="JWT"`` an id_token."""
        key = self.signing_key(alg)
        return jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid, "typ": typ})
