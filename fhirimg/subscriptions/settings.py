"""The ``[subscriptions]`` configuration section.

Registered with fhirimg.config under the name ``subscriptions``; every key is documented in
config/fhirimg.toml.
"""
from __future__ import annotations

from dataclasses import dataclass

from marshmallow import RAISE, Schema, fields, validate

from fhirimg.config import register_section


class SubscriptionsSchema(Schema):
    class Meta:
        unknown = RAISE

    # How often the worker's dispatcher looks for committed changes and due deliveries.
    poll_interval = fields.Float(load_default=0.1, validate=validate.Range(0.01, 60))
    # A subscription whose deliveries have failed for this long turns to status "error";
    # its events keep being numbered and kept, and it is still retried (at max_backoff).
    max_error_seconds = fields.Float(load_default=600.0, validate=validate.Range(1, 30 * 86_400))
    # Retries: exponential backoff from first_backoff to max_backoff, with full jitter; a
    # Retry-After answer is honoured (up to max_backoff).
    first_backoff = fields.Float(load_default=1.0, validate=validate.Range(0.01, 3600))
    max_backoff = fields.Float(load_default=300.0, validate=validate.Range(0.01, 86_400))
    # $events can replay any event of the last retention_days.
    retention_days = fields.Float(load_default=30.0, validate=validate.Range(0.001, 3650))
    # Each POST's time limit unless the Subscription's `timeout` is shorter.
    timeout = fields.Float(load_default=10.0, validate=validate.Range(0.1, 300))
    # Bounds on what a client may ask for.
    max_subscriptions = fields.Integer(load_default=10_000, validate=validate.Range(1))
    min_heartbeat = fields.Integer(load_default=10, validate=validate.Range(1))
    max_events_per_request = fields.Integer(load_default=1000, validate=validate.Range(1, 100_000))
    # websocket channel: `make run` starts the listener when websocket_listener is true (in
    # production run `fhirimg subscriptions websocket`); websocket_url is its address as
    # clients reach it (behind a TLS proxy: wss://...), else ws://websocket_host:websocket_port;
    # a binding token is good for ws_token_seconds.
    websocket_listener = fields.Boolean(load_default=True)
    websocket_url = fields.String(load_default=None, allow_none=True,
                                  validate=validate.Regexp(r"^wss?://\S+$", error="must be a ws:// or wss:// URL"))
    websocket_host = fields.String(load_default="127.0.0.1")
    websocket_port = fields.Integer(load_default=8081, validate=validate.Range(0, 65535))
    ws_token_seconds = fields.Integer(load_default=300, validate=validate.Range(10, 86_400))


@dataclass(frozen=True)
class SubscriptionSettings:
    poll_interval: float = 0.1
    max_error_seconds: float = 600.0
    first_backoff: float = 1.0
    max_backoff: float = 300.0
    retention_days: float = 30.0
    timeout: float = 10.0
    max_subscriptions: int = 10_000
    min_heartbeat: int = 10
    max_events_per_request: int = 1000
    websocket_listener: bool = True
    websocket_url: str | None = None
    websocket_host: str = "127.0.0.1"
    websocket_port: int = 8081
    ws_token_seconds: int = 300


def subscription_settings(config: dict) -> SubscriptionSettings:
    section = (config.get("sections") or {}).get("subscriptions")
    return SubscriptionSettings(**(section if section is not None else SubscriptionsSchema().load({})))


register_section("subscriptions", SubscriptionsSchema)
