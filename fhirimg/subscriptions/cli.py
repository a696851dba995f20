"""`fhirimg subscriptions status | websocket`."""
from __future__ import annotations

import json

import click


@click.group("subscriptions", context_settings={"help_option_names": ["-h", "--help"]})
def subscriptions() -> None:
    """FHIR R5 topic-based subscriptions: delivery status, the websocket listener."""


def _config(config_path):
    from ..cli import _load, _setup_logging
    config = _load(config_path)
    _setup_logging(config)
    return config


@subscriptions.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def status(as_json, config_path) -> None:
    """Per subscription: status, events numbered, last delivered, backlog and last error."""
    from ..store import create_schema, make_engine
    from .status import format_statuses, statuses
    config = _config(config_path)
    engine = make_engine(config["database_url"])
    create_schema(engine)
    rows, matcher = statuses(engine)
    if as_json:
        click.echo(json.dumps({"matcher_seq": matcher, "subscriptions": [r.to_json() for r in rows]}, indent=2))
    else:
        click.echo(format_statuses(rows, matcher))


@subscriptions.command("websocket")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def websocket(config_path) -> None:
    """Run the websocket channel's listener ([subscriptions] websocket_host, websocket_port)."""
    from ..store import create_schema, make_engine
    from .websocket import run_listener
    config = _config(config_path)
    create_schema(make_engine(config["database_url"]))
    run_listener(config)
