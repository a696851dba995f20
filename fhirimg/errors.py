"""The one error model: every failure is a FhirError rendered as an OperationOutcome.

Raise these anywhere (storage, validation, HTTP parsing); one Flask handler turns them
into a response, so no view ever builds error JSON by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Issue:
    """One OperationOutcome.issue: what went wrong (code, diagnostics) and where (expression)."""

    code: str
    diagnostics: str
    expression: list[str] = field(default_factory=list)
    severity: str = "error"

    def to_json(self) -> dict:
        issue = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


class FhirError(Exception):
    """An error with an HTTP status and one or more OperationOutcome issues."""

    def __init__(self, status: int, code: str, diagnostics: str,
                 expression: list[str] | None = None, issues: list[Issue] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(diagnostics)
        self.status = status
        self.issues = issues or [Issue(code, diagnostics, list(expression or []))]
        self.headers = headers or {}

    @property
    def diagnostics(self) -> str:
        return "; ".join(i.diagnostics for i in self.issues)

    def prefixed(self, prefix: str, note: str | None = None) -> "FhirError":
        """Re-root every issue path under `prefix` (e.g. Bundle.entry[2].resource)."""
        for issue in self.issues:
            issue.expression = [_join_path(prefix, e) for e in issue.expression] or [prefix]
            if note:
                issue.diagnostics = f"{note}: {issue.diagnostics}"
        return self

    def to_outcome(self) -> dict:
        return operation_outcome(self.issues)


def _join_path(prefix: str, expression: str) -> str:
    # Expressions start with the resource type ("ImagingStudy.status"); inside a bundle the
    # resource type is replaced by the entry's path.
    head, _, rest = expression.partition(".")
    if head and head[0].isupper() and rest:
        return f"{prefix}.{rest}"
    if head and head[0].isupper():
        return prefix
    return f"{prefix}.{expression}"


def outcome_entry(issues: list[Issue]) -> dict:
    """A searchset entry for an OperationOutcome (search.mode = outcome). bdl-15 wants every
    entry with a resource to have a fullUrl: an OperationOutcome has no id here, so a urn:uuid."""
    import uuid
    return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": operation_outcome(issues), "search": {"mode": "outcome"}}


MAX_ISSUES = 100  # a document with a million bad elements once answered with a 121 MB outcome


def operation_outcome(issues: list[Issue]) -> dict:
    shown = [i.to_json() for i in issues[:MAX_ISSUES]]
    if len(issues) > MAX_ISSUES:
        shown.append(Issue("too-costly", f"{len(issues) - MAX_ISSUES} more issues are not shown; "
                                         "correct the ones above and send it again", severity="information").to_json())
    return {"resourceType": "OperationOutcome", "issue": shown}


def informational_outcome(diagnostics: str, code: str = "informational") -> dict:
    return operation_outcome([Issue(code, diagnostics, severity="information")])


class Invalid(FhirError):
    """400: the request or its content is malformed."""

    def __init__(self, diagnostics: str, expression: list[str] | None = None, code: str = "invalid",
                 issues: list[Issue] | None = None):
        super().__init__(400, code, diagnostics, expression, issues)


class Unprocessable(FhirError):
    """422: well-formed content that breaks a rule of the specification."""

    def __init__(self, diagnostics: str, expression: list[str] | None = None, code: str = "processing",
                 issues: list[Issue] | None = None):
        super().__init__(422, code, diagnostics, expression, issues)


class NotFound(FhirError):
    def __init__(self, diagnostics: str, expression: list[str] | None = None):
        super().__init__(404, "not-found", diagnostics, expression)


class Gone(FhirError):
    def __init__(self, diagnostics: str, headers: dict[str, str] | None = None):
        super().__init__(410, "deleted", diagnostics, headers=headers)


class Conflict(FhirError):
    """409. ``resource`` names the (type, id) that conflicted when the error may surface
    after the operation that caused it (a create written with later statements)."""

    def __init__(self, diagnostics: str, expression: list[str] | None = None,
                 resource: tuple[str, str] | None = None):
        super().__init__(409, "conflict", diagnostics, expression)
        self.resource = resource


class PreconditionFailed(FhirError):
    def __init__(self, diagnostics: str, expression: list[str] | None = None):
        super().__init__(412, "conflict", diagnostics, expression)


class TooLarge(FhirError):
    def __init__(self, diagnostics: str):
        super().__init__(413, "too-costly", diagnostics)


class NotAcceptable(FhirError):
    def __init__(self, diagnostics: str):
        super().__init__(406, "not-supported", diagnostics)


class UnsupportedMediaType(FhirError):
    def __init__(self, diagnostics: str):
        super().__init__(415, "not-supported", diagnostics)


class MethodNotAllowed(FhirError):
    def __init__(self, diagnostics: str, allowed: list[str]):
        super().__init__(405, "not-supported", diagnostics, headers={"Allow": ", ".join(allowed)})
