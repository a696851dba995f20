"""The errors of access control, in the one error model (401 and 403 as OperationOutcomes),
and the token endpoint's own RFC 6749 error, which OAuth clients expect as JSON."""
from __future__ import annotations

from ..errors import FhirError


class Unauthorized(FhirError):
    """401: no usable bearer token. The challenge says why; the token is never echoed."""

    def __init__(self, diagnostics: str, error: str = "invalid_token"):
        description = diagnostics.replace('"', "'")[:200]
        challenge = f'Bearer realm="fhirimg", error="{error}", error_description="{description}"' \
            if error else 'Bearer realm="fhirimg"'
        super().__init__(401, "login", diagnostics, headers={"WWW-Authenticate": challenge})


class Forbidden(FhirError):
    """403: the token is valid but does not reach what was asked."""

    def __init__(self, diagnostics: str, expression: list[str] | None = None,
                 resource: tuple[str, str] | None = None):
        super().__init__(403, "forbidden", diagnostics, expression)
        self.resource = resource  # the (type, id) refused, for a Bundle to name its entry


class OAuthError(Exception):
    """An RFC 6749 §5.2 error of the token endpoint: ``{"error", "error_description"}``."""

    def __init__(self, error: str, description: str, status: int = 400):
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = 401 if error == "invalid_client" else status

    def to_json(self) -> dict:
        return {"error": self.error, "error_description": self.description}
