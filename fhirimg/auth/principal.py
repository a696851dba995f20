"""Who a request acts for: the client, the user, the patient context, and the scopes granted."""
from __future__ import annotations

from dataclasses import dataclass, field

from .scopes import ScopeSet, parse_scopes


@dataclass
class Principal:
    client_id: str
    scopes: ScopeSet
    issuer: str = ""
    subject: str | None = None
    # The user as the audit trail names them (agent "who"): the token's fhirUser reference,
    # else - for this server's own App Launch tokens - the user's name here.
    fhir_user: str | None = None
    user: str | None = None  # the user's name at this server's authorization endpoint (own tokens)
    patient: str | None = None  # the launch context (`patient` claim)
    expires_at: float = 0.0
    token_id: str | None = None
    # The client's pre-authorised reach (client registry): ids, empty = no limit beyond scopes.
    patients: tuple[str, ...] = ()
    organizations: tuple[str, ...] = ()
    anonymous: bool = False
    notes: list[str] = field(default_factory=list)  # scopes set aside, with why (reported on 403)
    decisions: dict = field(default_factory=dict, repr=False, compare=False)  # auth.decision.decide's memo

    @property
    def is_limited(self) -> bool:
        """Whether the client's registration limits it to some patients' data."""
        return bool(self.patients or self.organizations)


def anonymous_principal() -> Principal:
    """auth.mode = "none" (only with auth.allow_anonymous): everything, as the operator chose."""
    return Principal("anonymous", parse_scopes("system/*.cruds"), anonymous=True)
