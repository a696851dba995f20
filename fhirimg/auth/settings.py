"""The ``[auth]`` and ``[cors]`` configuration sections (validated at start-up)."""
from __future__ import annotations

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384")


class IssuerSchema(Schema):
    """An external authorization server whose access tokens this server accepts."""

    class Meta:
        unknown = RAISE

    issuer = fields.String(required=True, validate=validate.Regexp(r"^https?://\S+$"))
    jwks_url = fields.String(load_default="", validate=validate.Regexp(r"^(|https?://\S+)$"))
    introspection_url = fields.String(load_default="", validate=validate.Regexp(r"^(|https?://\S+)$"))
    introspection_client_id = fields.String(load_default="")
    introspection_secret_env = fields.String(load_default="", validate=validate.Regexp(r"^([A-Z_][A-Z0-9_]*)?$"))
    audience = fields.List(fields.String(), load_default=list)  # [] = this server's FHIR base URL
    algorithms = fields.List(fields.String(validate=validate.OneOf(ALGORITHMS)),
                             load_default=lambda: ["RS256", "RS384", "ES256", "ES384"])

    @validates_schema
    def check_one_way(self, data, **_):
        if bool(data["jwks_url"]) == bool(data["introspection_url"]):
            raise ValidationError("give exactly one of jwks_url and introspection_url", "jwks_url")


class AuthSchema(Schema):
    class Meta:
        unknown = RAISE

    mode = fields.String(load_default="smart", validate=validate.OneOf(["smart", "none"]))
    allow_anonymous = fields.Boolean(load_default=False)
    token_lifetime = fields.Integer(load_default=300, validate=validate.Range(10, 300))
    key_rotation_days = fields.Float(load_default=30.0, validate=validate.Range(0.0001, 3650))
    clock_skew = fields.Integer(load_default=30, validate=validate.Range(0, 300))
    jwks_max_age = fields.Integer(load_default=3600, validate=validate.Range(0, 86_400))
    jwks_refresh_cooldown = fields.Float(load_default=30.0, validate=validate.Range(0.0, 3600))
    introspection_cache_seconds = fields.Float(load_default=10.0, validate=validate.Range(0.0, 10.0))
    # Hosts a client's JWKS URL or an issuer's JWKS/introspection URL may be on (the
    # transfers' SSRF guard, with its own list).
    allowed_hosts = fields.List(fields.String(validate=validate.Length(1, 255)), load_default=list)
    allow_loopback = fields.Boolean(load_default=False)
    issuers = fields.List(fields.Nested(IssuerSchema), load_default=list)

    @validates_schema
    def check_anonymous(self, data, **_):
        if data["mode"] == "none" and not data["allow_anonymous"]:
            raise ValidationError("auth.mode = \"none\" serves every patient's data to anyone who can reach "
                                  "the port; it needs auth.allow_anonymous = true as well", "mode")


class CorsSchema(Schema):
    class Meta:
        unknown = RAISE

    allowed_origins = fields.List(fields.String(validate=validate.Regexp(r"^https?://[^/\s]+$",
                                                                         error="an origin: scheme://host[:port]")),
                                  load_default=list)
    max_age = fields.Integer(load_default=600, validate=validate.Range(0, 86_400))
