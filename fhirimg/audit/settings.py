"""The ``[audit]`` configuration section (validated at start-up)."""
from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..config import CredentialsSchema


class ForwardSchema(CredentialsSchema):
    """One external audit repository the trail is copied to, from the durable outbox (the
    audit table itself, read after a per-target cursor)."""

    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=validate.Regexp(r"^[a-z0-9][a-z0-9_-]{0,39}$"))
    # fhir: POST a batch Bundle of AuditEvents to url (ATNA's FHIR Feed, ITI-20);
    # syslog: RFC 5424 messages over TLS (RFC 5425) to host:port.
    kind = fields.String(required=True, validate=validate.OneOf(["fhir", "syslog"]))
    url = fields.String(load_default="", validate=validate.Regexp(r"^(|https?://\S+[^/])$"))
    host = fields.String(load_default="")
    port = fields.Integer(load_default=6514, validate=validate.Range(1, 65535))
    ca_file = fields.String(load_default="")  # "" = the system's trust store
    cert_file = fields.String(load_default="")  # client certificate (mutual TLS, as ATNA asks)
    key_file = fields.String(load_default="")
    batch_size = fields.Integer(load_default=100, validate=validate.Range(1, 10_000))
    timeout = fields.Float(load_default=10.0, validate=validate.Range(0.1, 300))

    @validates_schema
    def check_target(self, data, **_):
        if data["kind"] == "fhir" and not data["url"]:
            raise ValidationError("a fhir forward needs url (the audit repository's FHIR base)", "url")
        if data["kind"] == "syslog" and not data["host"]:
            raise ValidationError("a syslog forward needs host (and port, default 6514)", "host")


class AuditSchema(Schema):
    class Meta:
        unknown = RAISE

    # Off only to measure what auditing costs (bench crud --compare-audit): a server with
    # patient data keeps it on.
    enabled = fields.Boolean(load_default=True)
    # Read and query events are committed in groups: at most this many events per commit.
    max_batch = fields.Integer(load_default=1000, validate=validate.Range(1, 100_000))
    # How long a request waits for its events to be durable before it answers 503.
    commit_timeout = fields.Float(load_default=10.0, validate=validate.Range(0.1, 600))
    # 0 = keep for ever; otherwise `fhirimg audit prune` removes events older than this,
    # and only those `fhirimg audit export` has written out first.
    retention_days = fields.Integer(load_default=0, validate=validate.Range(0, 36_500))
    # Seconds between forwarding rounds, and the longest back-off after failures.
    forward_interval = fields.Float(load_default=5.0, validate=validate.Range(0.1, 3600))
    forward_max_backoff = fields.Float(load_default=300.0, validate=validate.Range(1, 86_400))
    forward = fields.List(fields.Nested(ForwardSchema), load_default=list)
