"""The access-control parts of one running app, built once by create_app."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from ..transfer.netpolicy import HostPolicy
from .codes import CodeStore
from .grants import LaunchTokens
from .jwks import KeySetCache
from .keys import ID_TOKEN_ALG, KeyRing
from .refresh import RefreshStore
from .throttle import LoginThrottle
from .tokens import TokenServer
from .verify import TokenVerifier

# conformance.html: only what is done. Standalone launch of public (and asymmetric
# confidential) clients with user/ scopes, OpenID Connect, online_access refresh tokens.
# Not: launch-ehr, context-standalone-patient (no patient picker: a patient context comes
# only from a user's or client's registration), permission-offline, client-confidential-symmetric.
SMART_CAPABILITIES = ["launch-standalone", "authorize-post", "client-public", "client-confidential-asymmetric",
                      "sso-openid-connect", "permission-user", "permission-online", "permission-v2", "permission-v1",
                      "smart-imaging-access", "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services"]
ROOT_SUFFIX = "/fhir"
IDENTITY_SCOPES = ["openid", "fhirUser", "profile", "online_access"]


@dataclass
class AuthContext:
    settings: dict
    keys: KeyRing
    key_sets: KeySetCache
    tokens: TokenServer
    verifier_by_issuer: dict
    launch: LaunchTokens | None = None
    throttle: LoginThrottle | None = None

    @property
    def enabled(self) -> bool:
        return self.settings["mode"] == "smart"

    def verifier(self, issuer: str) -> TokenVerifier:
        """One verifier per own-issuer URL (a server reached under two names has two)."""
        found = self.verifier_by_issuer.get(issuer)
        if found is None:
            found = TokenVerifier(self.keys, self.key_sets, issuer, self.settings["issuers"],
                                  self.settings["clock_skew"], self.settings["introspection_cache_seconds"])
            self.verifier_by_issuer[issuer] = found
        return found


def build_auth(settings: dict, engine: Engine) -> AuthContext:
    policy = HostPolicy(settings["allowed_hosts"], settings["allow_loopback"], list_name="auth.allowed_hosts")
    keys = KeyRing(engine, settings["key_rotation_days"] * 86_400, settings["token_lifetime"])
    key_sets = KeySetCache(policy, settings["jwks_max_age"], settings["jwks_refresh_cooldown"])
    tokens = TokenServer(engine, keys, key_sets, settings["token_lifetime"], settings["clock_skew"])
    launch = LaunchTokens(engine, keys, CodeStore(engine), RefreshStore(engine), tokens, settings["token_lifetime"])
    return AuthContext(settings, keys, key_sets, tokens, {}, launch, LoginThrottle(engine))


def server_root(fhir_base: str) -> str:
    """``https://host/fhir`` -> ``https://host``: where ``/auth`` and ``/dicom-web`` live."""
    root = fhir_base.rstrip("/")
    return root[: -len(ROOT_SUFFIX)] if root.endswith(ROOT_SUFFIX) else root


def smart_configuration(fhir_base: str, scopes_supported: list[str]) -> dict:
    """``.well-known/smart-configuration`` (conformance.html), every URL absolute."""
    root = server_root(fhir_base)
    return {
        "issuer": f"{root}/auth",
        "jwks_uri": f"{root}/auth/jwks",
        "authorization_endpoint": f"{root}/auth/authorize",
        "token_endpoint": f"{root}/auth/token",
        "revocation_endpoint": f"{root}/auth/revoke",
        "userinfo_endpoint": f"{root}/auth/userinfo",
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        # "none": a public client (RFC 8414 names it so); private_key_jwt: Backend Services
        # and confidential App Launch clients.
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        "scopes_supported": list(dict.fromkeys(IDENTITY_SCOPES + scopes_supported)),
        "response_types_supported": ["code"],
        "capabilities": SMART_CAPABILITIES,
        "code_challenge_methods_supported": ["S256"],
    }


def openid_configuration(fhir_base: str, scopes_supported: list[str]) -> dict:
    """OpenID Connect Discovery 1.0 §3, at ``{issuer}/.well-known/openid-configuration``
    (what an OIDC client such as the OHIF Viewer reads first)."""
    smart = smart_configuration(fhir_base, scopes_supported)
    keep = ("issuer", "authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri",
            "revocation_endpoint", "scopes_supported", "response_types_supported", "grant_types_supported",
            "token_endpoint_auth_methods_supported", "token_endpoint_auth_signing_alg_values_supported",
            "code_challenge_methods_supported")
    return {**{k: smart[k] for k in keep}, "response_modes_supported": ["query"],
            "subject_types_supported": ["public"], "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
            "claims_supported": ["iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce", "fhirUser",
                                 "preferred_username"],
            "request_parameter_supported": False, "request_uri_parameter_supported": False}
