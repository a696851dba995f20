"""The subscription settings an app works with: the configured bounds and the allow-list
endpoints must pass (the transfer workers' own, so one list says where this server may
connect to)."""
from __future__ import annotations

from dataclasses import dataclass

from ..transfer.netpolicy import HostPolicy
from ..transfer.settings import transfer_section
from .settings import SubscriptionSettings, subscription_settings

EXTENSION = "fhirimg.subscriptions"


@dataclass(frozen=True)
class SubscriptionRules:
    settings: SubscriptionSettings
    policy: HostPolicy


def subscription_rules(config: dict) -> SubscriptionRules:
    section = transfer_section(config)
    policy = HostPolicy(list(section["allowed_hosts"]), section["allow_loopback"],
                        list_name="transfer allow-list (transfer.allowed_hosts)")
    return SubscriptionRules(subscription_settings(config), policy)


def app_rules() -> SubscriptionRules | None:
    from flask import current_app, has_app_context
    return current_app.extensions.get(EXTENSION) if has_app_context() else None
