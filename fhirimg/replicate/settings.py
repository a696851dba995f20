"""The ``[replicate]`` configuration section: this site's id, defaults, and the links.

Registered with fhirimg.config as ``replicate``; config/replicate.example.toml documents
every key. Credentials are never in the file: a link names the environment variables
that hold them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..config import Credentials, CredentialsSchema, register_section
from ..resources import SUPPORTED_TYPES

CONFLICT_RULES = ["source-wins", "local-wins", "newest-wins"]
NAME = validate.Regexp(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", error="1-64 letters, digits, _ . -")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m|h)?$")


def parse_duration(text: str | float | int) -> float:
    """'30s', '5m', '1h', '250ms' or a number of seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 5m, 1h")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


class Duration(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        try:
            seconds = parse_duration(value)
        except (ValueError, AttributeError):
            raise ValidationError("must be a duration like 30s, 5m, 1h") from None
        if seconds < 0.1 or seconds > 86_400:
            raise ValidationError("must be between 100ms and 24h")
        return seconds


class LinkSchema(CredentialsSchema):
    class Meta:
        unknown = RAISE

    name = fields.String(required=True, validate=NAME)
    direction = fields.String(required=True, validate=validate.OneOf(["pull", "push"]))
    url = fields.String(required=True, validate=validate.Regexp(r"^https?://\S+[^/]$",
                                                                error="must be an http(s) FHIR base URL without a trailing /"))
    types = fields.List(fields.String(validate=validate.OneOf(SUPPORTED_TYPES)), load_default=list)
    interval = Duration(load_default=30.0)
    conflict_rule = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(CONFLICT_RULES))
    enabled = fields.Boolean(load_default=True)


class ReplicateSchema(Schema):
    class Meta:
        unknown = RAISE

    site_id = fields.String(load_default="", validate=validate.Regexp(r"^(|[a-z][a-z0-9+.\-]*:\S+)$",
                                                                      error="must be a URI, e.g. urn:uuid:..."))
    conflict_rule = fields.String(load_default="source-wins", validate=validate.OneOf(CONFLICT_RULES))
    page_size = fields.Integer(load_default=200, validate=validate.Range(1, 1000))
    connect_timeout = fields.Float(load_default=5.0, validate=validate.Range(0.1, 300))
    read_timeout = fields.Float(load_default=60.0, validate=validate.Range(0.1, 3600))
    max_attempts = fields.Integer(load_default=5, validate=validate.Range(1, 50))
    backoff_base = fields.Float(load_default=0.5, validate=validate.Range(0.0, 60))
    backoff_max = fields.Float(load_default=30.0, validate=validate.Range(0.0, 3600))
    retry_after_max = fields.Float(load_default=120.0, validate=validate.Range(0.0, 3600))
    max_response_bytes = fields.Integer(load_default=256 << 20, validate=validate.Range(1024))
    links = fields.List(fields.Nested(LinkSchema), load_default=list)

    @validates_schema
    def check_unique_names(self, data, **_):
        names = [link["name"] for link in data["links"]]
        if len(names) != len(set(names)):
            raise ValidationError("link names must be unique", "links")


register_section("replicate", ReplicateSchema)


@dataclass
class Link(Credentials):
    """One replication link: pull from a source or push to a destination."""

    name: str
    direction: str
    url: str
    types: list[str] = field(default_factory=list)
    interval: float = 30.0
    conflict_rule: str = "source-wins"
    enabled: bool = True


def replicate_section(config: dict) -> dict:
    section = (config.get("sections") or {}).get("replicate")
    return section if section is not None else ReplicateSchema().load({})


def configured_links(config: dict) -> list[Link]:
    section = replicate_section(config)
    out = []
    for raw in section["links"]:
        values = dict(raw, conflict_rule=raw.get("conflict_rule") or section["conflict_rule"])
        out.append(Link(**values))
    return out


def adhoc_link(direction: str, url: str, types: list[str], interval: float, section: dict,
               name: str | None = None) -> Link:
    """A link given on the command line; its name (and so its cursor) is derived from the URL."""
    url = url.rstrip("/")
    if not re.match(r"^https?://\S+$", url):
        raise ValueError(f"{url!r} is not an http(s) URL")
    for t in types:
        if t not in SUPPORTED_TYPES:
            raise ValueError(f"type {t!r} is not supported (supported: {', '.join(SUPPORTED_TYPES)})")
    return Link(name=name or derived_name(direction, url), direction=direction, url=url, types=list(types),
                interval=interval, conflict_rule=section["conflict_rule"])


def derived_name(direction: str, url: str) -> str:
    import hashlib
    host = re.sub(r"[^A-Za-z0-9.\-]+", "-", url.split("://", 1)[1])[:40].strip("-")
    return f"{direction}-{host}-{hashlib.sha256(url.encode()).hexdigest()[:8]}"
