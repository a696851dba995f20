"""The token endpoint's App Launch grants: ``authorization_code`` (app-launch.html step 5)
and ``refresh_token`` (step 7).

A public client names itself with ``client_id`` (it has nothing to prove it with: the
registered redirect URI and PKCE protect its codes); a confidential one authenticates with
a ``private_key_jwt`` assertion as in Backend Services. The access token has the same form
as a Backend Services token - the resource server verifies it unchanged - with ``sub`` the
user. An ``id_token`` (OpenID Connect, signed RS256 as SMART's sso-openid-connect asks)
comes when ``openid`` was granted.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from .clients import Client, get_client
from .codes import CodeStore
from .errors import OAuthError
from .keys import ID_TOKEN_ALG, KeyRing
from .launch import Grant, granted_scopes
from .refresh import RefreshStore, Renewal
from .scopes import parse_scopes
from .tokens import TokenServer
from .users import User, get_user

GRANT_TYPES = ("authorization_code", "refresh_token")


@dataclass
class LaunchTokens:
    engine: Engine
    keys: KeyRing
    codes: CodeStore
    refresh: RefreshStore
    backend: TokenServer  # authenticates confidential clients' assertions
    lifetime: int
    clock: object = time.time

    def issue(self, form: dict[str, str], token_urls: list[str], issuer: str) -> dict:
        """The token response for an authorization_code or refresh_token request, or OAuthError."""
        client = self.client_of(form, token_urls)
        renewal = None
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.redeem(form.get("code") or "", client.client_id, form.get("redirect_uri") or "",
                                      form.get("code_verifier") or "")
        else:
            renewal = self.refresh.use(form.get("refresh_token") or "", client.client_id)
            grant = renewal.grant
        user = get_user(self.engine, grant.username)
        if user is None or user.disabled:
            raise OAuthError("invalid_grant", "the user is no longer allowed to sign in")
        if renewal is not None:
            grant = self.narrowed(grant, client, user, form.get("scope"))
        return self.answer(client, user, grant, issuer, renewal)

    def client_of(self, form: dict[str, str], token_urls: list[str]) -> Client:
        if form.get("client_assertion"):
            client, _ = self.backend.authenticate(form["client_assertion"], token_urls)
            if form.get("client_id") not in (None, client.client_id):
                raise OAuthError("invalid_client", "client_id is not the client the assertion names")
            return client
        client = get_client(self.engine, form.get("client_id") or "") if form.get("client_id") else None
        if client is None or client.disabled:
            raise OAuthError("invalid_client", "unknown or disabled client_id")
        if not client.public:
            raise OAuthError("invalid_client", f"{client.client_id} is a confidential client: authenticate with "
                             "client_assertion (private_key_jwt)")
        return client

    @staticmethod
    def narrowed(grant: Grant, client: Client, user: User, scope: str | None) -> Grant:
        """A refresh gets the original scopes or fewer (never new ones), within what the app
        and the user may have now."""
        original = parse_scopes(grant.scope)
        asked = parse_scopes(scope) if scope else original
        allowed = granted_scopes(asked, original, parse_scopes(user.scopes))
        allowed = granted_scopes(allowed, parse_scopes(client.scopes), parse_scopes(user.scopes))
        if not allowed.scopes and "openid" not in allowed.other:
            raise OAuthError("invalid_scope", "none of the requested scopes was granted at sign-in")
        return Grant(**{**grant.to_json(), "scope": allowed.text()})

    def answer(self, client: Client, user: User, grant: Grant, issuer: str, renewal: Renewal | None) -> dict:
        now = int(self.clock())
        granted = parse_scopes(grant.scope)
        access = {"iss": issuer, "sub": user.username, "aud": grant.aud, "client_id": client.client_id,
                  "iat": now, "exp": now + self.lifetime, "jti": uuid.uuid4().hex, "scope": grant.scope}
        if grant.patients:
            access["fhirimg_patients"] = grant.patients
        if grant.organizations:
            access["fhirimg_organizations"] = grant.organizations
        if grant.patient:
            access["patient"] = grant.patient
        if user.fhir_user:
            access["fhirUser"] = user.fhir_user
        body = {"access_token": self.keys.sign(access), "token_type": "Bearer", "expires_in": self.lifetime,
                "scope": grant.scope}
        if grant.patient:
            body["patient"] = grant.patient
        if "openid" in granted.other and renewal is None:  # OIDC Core §12.2: a refresh may omit it
            body["id_token"] = self.id_token(client, user, grant, issuer, now)
        if "online_access" in granted.other:
            body["refresh_token"] = self.refresh.issue(grant, renewal)
        return body

    def id_token(self, client: Client, user: User, grant: Grant, issuer: str, now: int) -> str:
        """OIDC Core §2: who signed in, for this client; fhirUser (SMART) when granted and known."""
        granted = parse_scopes(grant.scope).other
        claims = {"iss": issuer, "sub": user.username, "aud": client.client_id, "azp": client.client_id,
                  "iat": now, "exp": now + self.lifetime, "auth_time": grant.auth_time}
        if grant.nonce:
            claims["nonce"] = grant.nonce
        if "fhirUser" in granted and user.fhir_user:
            claims["fhirUser"] = user.fhir_user
        if "profile" in granted:
            claims["preferred_username"] = user.username
        return self.keys.sign(claims, alg=ID_TOKEN_ALG, typ="JWT")
