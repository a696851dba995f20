"""The ``[metrics]`` configuration section: where /metrics and /readyz are served, and how
they are protected on the API's own port.

Registered with fhirimg.config under the name ``metrics``; every key is described in
config/fhirimg.toml. Importing this module must stay cheap and must not import
prometheus_client (see fhirimg.metrics.multiprocess).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates

from ..config import ENV_NAME, register_section

# host:port, the host an IPv4 address, a name or a bracketed IPv6 address ([::1]:9464).
LISTEN = validate.Regexp(r"^(|(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+):[0-9]{1,5})$",
                         error="must be host:port, e.g. 127.0.0.1:9464 (empty: the API's port)")


class MetricsSchema(Schema):
    class Meta:
        unknown = RAISE

    listen = fields.String(load_default="", validate=LISTEN)
    token_env = fields.String(load_default="", validate=ENV_NAME)
    readiness_timeout = fields.Float(load_default=2.0, validate=validate.Range(0.1, 60))
    cache_seconds = fields.Float(load_default=60.0, validate=validate.Range(0, 86_400))

    @validates("token_env")
    def check_not_a_setting(self, value: str, **_) -> None:
        # config._from_env reads every FHIRIMG_* variable as a setting: the token's variable
        # would be refused as an unknown key at start-up.
        if value.startswith("FHIRIMG_"):
            raise ValidationError("FHIRIMG_* variables are configuration keys; name another variable "
                                  "(e.g. METRICS_TOKEN)")

    @validates("listen")
    def check_port(self, value: str, **_) -> None:
        if value and not 1 <= int(value.rpartition(":")[2]) <= 65535:
            raise ValidationError("the port must be 1-65535")


@dataclass(frozen=True)
class MetricsSettings:
    """The validated section, with the token read from its environment variable."""

    listen: tuple[str, int] | None = None
    token_env: str = ""
    token: str = ""
    readiness_timeout: float = 2.0
    cache_seconds: float = 60.0

    def is_listener(self, environ: Mapping) -> bool:
        """Whether a request came in on the metrics listener. SERVER_PORT is the port of the
        socket that accepted the connection (gunicorn, werkzeug), never a client's header."""
        return self.listen is not None and str(environ.get("SERVER_PORT", "")) == str(self.listen[1])


def metrics_section(config: dict) -> dict:
    """The validated ``[metrics]`` section (its defaults when it was not registered in time)."""
    section = (config.get("sections") or {}).get("metrics")
    return section if section is not None else MetricsSchema().load({})


def metrics_settings(config: dict, env: Mapping[str, str] | None = None) -> MetricsSettings:
    section = metrics_section(config)
    env = os.environ if env is None else env
    token_env = section["token_env"]
    return MetricsSettings(listen=parse_listen(section["listen"]), token_env=token_env,
                           token=(env.get(token_env, "") if token_env else "").strip(),
                           readiness_timeout=section["readiness_timeout"], cache_seconds=section["cache_seconds"])


def parse_listen(value: str) -> tuple[str, int] | None:
    if not value:
        return None
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


register_section("metrics", MetricsSchema)
