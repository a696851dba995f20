"""The access-control parts of one running app, built once by create_app."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from ..transfer.netpolicy import HostPolicy
from .jwks import KeySetCache
from .keys import KeyRing
from .tokens import TokenServer
from .verify import TokenVerifier

SMART_CAPABILITIES = ["client-confidential-asymmetric", "permission-v2", "permission-v1",
                      "smart-imaging-access", "http://fhir.org/argonaut/smart-imaging/capabilities/backend-services"]
ROOT_SUFFIX = "/fhir"


@dataclass
class AuthContext:
    settings: dict
    keys: KeyRing
    key_sets: KeySetCache
    tokens: TokenServer
    verifier_by_issuer: dict

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
    return AuthContext(settings, keys, key_sets, tokens, {})


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
        "token_endpoint": f"{root}/auth/token",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384", "RS256", "ES256"],
        "scopes_supported": scopes_supported,
        "response_types_supported": ["token"],
        "capabilities": SMART_CAPABILITIES,
        "code_challenge_methods_supported": ["S256"],
    }
