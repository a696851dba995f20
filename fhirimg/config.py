"""Configuration: one marshmallow schema, read once at start-up.

Sources, later ones winning: the schema's defaults, a TOML file (``--config``,
``FHIRIMG_CONFIG`` or ``config/fhirimg.toml`` when present), then ``FHIRIMG_*``
environment variables (``FHIRIMG_DATABASE_URL``; nested keys with a double underscore,
``FHIRIMG_SERVE__WORKERS``). A bad value stops start-up with a message naming the key.
"""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from .auth.settings import AuthSchema, CorsSchema

ENV_PREFIX = "FHIRIMG_"
DEFAULT_FILE = Path("config/fhirimg.toml")
SECRET_KEYS = ("password", "secret", "token")

# Extra sections contributed by other packages (transfer, replication) register a schema
# here before load_config is called; see register_section.
_SECTIONS: dict[str, type[Schema]] = {}


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending key."""


class ServeSchema(Schema):
    class Meta:
        unknown = RAISE

    host = fields.String(load_default="127.0.0.1")
    port = fields.Integer(load_default=8080, validate=validate.Range(1, 65535))
    workers = fields.Integer(load_default=4, validate=validate.Range(1, 256))
    threads = fields.Integer(load_default=4, validate=validate.Range(1, 256))
    timeout = fields.Integer(load_default=120, validate=validate.Range(1, 3600))
    # A worker process is replaced after this many requests (plus up to max_requests_jitter,
    # so they do not all restart at once), or after a request that left it above
    # max_worker_memory_mb of resident memory (Python rarely gives memory back).
    max_requests = fields.Integer(load_default=5000, validate=validate.Range(0, 10_000_000))
    max_requests_jitter = fields.Integer(load_default=500, validate=validate.Range(0, 1_000_000))
    max_worker_memory_mb = fields.Integer(load_default=1024, validate=validate.Range(16, 1_048_576))
    # The request intake (fhirimg.intake): a request's head must be whole header_timeout
    # seconds after its first byte, its body must then come at body_min_rate bytes/s on
    # average (after the same grace), and one address may have max_pending_per_client
    # requests still being sent to each worker process. Threads only see whole requests.
    header_timeout = fields.Float(load_default=10.0, validate=validate.Range(0.5, 600))
    body_min_rate = fields.Integer(load_default=4096, validate=validate.Range(1, 1 << 30))
    max_pending_per_client = fields.Integer(load_default=64, validate=validate.Range(1, 100_000))


class LimitsSchema(Schema):
    class Meta:
        unknown = RAISE

    max_body_bytes = fields.Integer(load_default=64 * 1024 * 1024, validate=validate.Range(1024))
    max_bundle_entries = fields.Integer(load_default=10_000, validate=validate.Range(1))
    default_page_size = fields.Integer(load_default=20, validate=validate.Range(1, 10_000))
    max_page_size = fields.Integer(load_default=1000, validate=validate.Range(1, 100_000))


class WorkerSchema(Schema):
    class Meta:
        unknown = RAISE

    queues = fields.List(fields.String(), load_default=lambda: ["fhirimg-notify", "fhirimg-urgent", "fhirimg"])
    embedded = fields.Boolean(load_default=True)
    fork = fields.Boolean(load_default=True)


# The two backends fhirimg/store speaks (psycopg 3 is the only PostgreSQL driver installed);
# anything else would pass here and die with a traceback when `serve` makes its engine.
DATABASE_URL = re.compile(r"^(sqlite:///\S+|postgresql(\+psycopg)?://\S+)$")


def check_database_url(url: str) -> None:
    """Refuse a URL the storage layer cannot open; the message shows only the scheme (a URL
    may hold a password)."""
    if not DATABASE_URL.match(url):
        given = f"{url.partition('://')[0]}://..." if "://" in url else "a URL without a scheme"
        raise ValidationError("must be sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DBNAME "
                              f"(or postgresql://...), not {given}")


class ConfigSchema(Schema):
    class Meta:
        unknown = RAISE

    database_url = fields.String(load_default="sqlite:///var/fhirimg.db", validate=check_database_url)
    redis_url = fields.String(load_default="")
    var_dir = fields.String(load_default="var")
    base_url = fields.String(load_default="", validate=validate.Regexp(r"^(|https?://\S+[^/])$"))
    # Without base_url: Host header values (host or host:port) absolute URLs may be built from;
    # any other Host gets the serve address (loopback names are always accepted).
    allowed_hosts = fields.List(fields.String(validate=validate.Length(1, 255)), load_default=list)
    log_level = fields.String(load_default="INFO",
                              validate=validate.OneOf(["DEBUG", "INFO", "WARNING", "ERROR"]))
    sql_echo = fields.Boolean(load_default=False)
    db_pool_size = fields.Integer(load_default=8, validate=validate.Range(1, 256))
    serve = fields.Nested(ServeSchema, load_default=lambda: ServeSchema().load({}))
    limits = fields.Nested(LimitsSchema, load_default=lambda: LimitsSchema().load({}))
    worker = fields.Nested(WorkerSchema, load_default=lambda: WorkerSchema().load({}))
    auth = fields.Nested(AuthSchema, load_default=lambda: AuthSchema().load({}))
    cors = fields.Nested(CorsSchema, load_default=lambda: CorsSchema().load({}))
    # audit.settings builds on CredentialsSchema below: named lazily.
    audit = fields.Nested(lambda: _audit_schema()(), load_default=lambda: _audit_schema()().load({}))
    # Registered sections (register_section) are validated by their own schema and put
    # under config["sections"] after loading; they are not fields here.


def _audit_schema() -> type[Schema]:
    from .audit.settings import AuditSchema
    return AuditSchema


def register_section(name: str, schema: type[Schema]) -> None:
    """Let a subsystem (transfer, replication) own a validated section of the config."""
    _SECTIONS[name] = schema


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                overrides: Mapping[str, Any] | None = None, read_files: bool = True) -> dict:
    """Load, merge and validate the configuration; raise ConfigError naming the bad key.

    `read_files=False` uses only the defaults, `env` and `overrides` (tests).
    """
    env = os.environ if env is None else env
    raw = _read_file(_config_path(path, env)) if read_files else {}
    _merge(raw, _typed_env(_from_env(env), _section_fields()))
    _merge(raw, dict(overrides or {}))
    extra = {name: raw.pop(name) for name in list(raw) if name in _SECTIONS}
    errors: dict = {}
    config: dict = {}
    try:
        config = ConfigSchema().load(raw)
    except ValidationError as exc:
        errors.update(exc.messages)
    sections = {}
    for name, schema in _SECTIONS.items():
        try:
            sections[name] = schema(unknown=RAISE).load(extra.get(name, {}))
        except ValidationError as exc:
            errors[name] = exc.messages
    if errors:
        raise ConfigError(f"invalid configuration: {_describe(errors)}")
    config["sections"] = sections
    return config


def _config_path(path, env) -> Path | None:
    if path:
        return Path(path)
    if env.get(ENV_PREFIX + "CONFIG"):
        return Path(env[ENV_PREFIX + "CONFIG"])
    return DEFAULT_FILE if DEFAULT_FILE.is_file() else None


def _read_file(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"configuration file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None


def _from_env(env: Mapping[str, str]) -> dict:
    """FHIRIMG_A__B=v becomes {"a": {"b": v}}; values stay strings for marshmallow to parse."""
    out: dict = {}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key in (ENV_PREFIX + "CONFIG", ENV_PREFIX + "TOKEN") or key.startswith(ENV_PREFIX + "TEST_"):
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def _section_fields() -> dict[str, fields.Field]:
    """The top-level fields, registered sections included, for typing environment values."""
    return {**ConfigSchema().fields, **{name: fields.Nested(schema) for name, schema in _SECTIONS.items()}}


def _typed_env(tree: dict, known: Mapping[str, fields.Field]) -> dict:
    """Environment values are strings; a list field takes comma-separated values
    (FHIRIMG_WORKER__QUEUES=a,b or one value). Everything else is parsed by marshmallow,
    and unknown names are kept so that validation reports them by key."""
    out: dict = {}
    for key, value in tree.items():
        field = known.get(key)
        if isinstance(value, dict) and isinstance(field, fields.Nested):
            schema = field.schema
            out[key] = _typed_env(value, schema.fields)
        elif isinstance(field, fields.List) and isinstance(value, str):
            out[key] = [item.strip() for item in value.split(",") if item.strip()]
        else:
            out[key] = value
    return out


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _describe(messages, prefix: str = "") -> str:
    if isinstance(messages, dict):
        return "; ".join(_describe(v, f"{prefix}{k}.") for k, v in messages.items())
    if isinstance(messages, list):
        return f"{prefix.rstrip('.')}: {' '.join(str(m) for m in messages)}"
    return f"{prefix.rstrip('.')}: {messages}"


def masked(config: Mapping[str, Any]) -> dict:
    """A copy safe to print: passwords in URLs and secret-looking keys are masked."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out[key] = masked(value)
        elif isinstance(value, str) and any(s in key.lower() for s in SECRET_KEYS) and value:
            out[key] = "***"
        elif isinstance(value, str) and "://" in value and "@" in value:
            out[key] = _mask_url_password(value)
        else:
            out[key] = value
    return out


def _mask_url_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if ":" in creds:
        creds = creds.split(":", 1)[0] + ":***"
    return f"{scheme}://{creds}{at}{host}"


@dataclass(kw_only=True)
class Credentials:
    """The validated CredentialsSchema fields, the base of a replication Link and of a
    transfer source's EndpointLimits."""

    auth: str = "none"  # none | basic | bearer | smart-backend
    username_env: str = ""
    password_env: str = ""
    token_env: str = ""
    client_id: str = ""
    kid: str = ""
    private_key_file: str = ""
    private_key_env: str = ""
    token_url: str = ""
    scope: str = "system/*.rs"


ENV_NAME = validate.Regexp(r"^([A-Z_][A-Z0-9_]*)?$", error="must be an environment variable name")


class CredentialsSchema(Schema):
    """How to authenticate to a remote server, by reference to environment variables (the
    secrets themselves never sit in a configuration file). Base of the replication link and
    transfer source schemas."""

    auth = fields.String(load_default="none", validate=validate.OneOf(["none", "basic", "bearer", "smart-backend"]))
    username_env = fields.String(load_default="", validate=ENV_NAME)
    password_env = fields.String(load_default="", validate=ENV_NAME)
    token_env = fields.String(load_default="", validate=ENV_NAME)
    # auth = "smart-backend": fhirimg is a SMART Backend Services client of the remote.
    client_id = fields.String(load_default="")
    kid = fields.String(load_default="")
    private_key_file = fields.String(load_default="")
    private_key_env = fields.String(load_default="", validate=ENV_NAME)
    token_url = fields.String(load_default="", validate=validate.Regexp(r"^(|https?://\S+)$"))
    scope = fields.String(load_default="system/*.rs")

    @validates_schema
    def check_auth_references(self, data, **_):
        if data["auth"] == "basic" and not (data["username_env"] and data["password_env"]):
            raise ValidationError("basic auth needs username_env and password_env", "auth")
        if data["auth"] == "bearer" and not data["token_env"]:
            raise ValidationError("bearer auth needs token_env", "auth")
        if data["auth"] == "smart-backend" and not (data["client_id"] and data["kid"]
                                                    and (data["private_key_file"] or data["private_key_env"])):
            raise ValidationError("smart-backend auth needs client_id, kid and private_key_file or "
                                  "private_key_env", "auth")
