"""``fhirimg audit ...``: the audit trail's own commands."""
from __future__ import annotations

import sys

import click


@click.group()
def audit() -> None:
    """The audit trail (append-only, hash-chained AuditEvent rows)."""


@audit.command("verify")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def verify(config_path) -> None:
    """Walk the hash chain: OK with the count and head hash, or the first row that breaks it (exit 1)."""
    from ..cli import _load
    from ..store import create_schema, make_engine
    from . import schema as _tables  # noqa: F401
    from .chain import verify_chain
    config = _load(config_path)
    engine = make_engine(config["database_url"])
    create_schema(engine)
    with engine.connect() as conn:
        verdict = verify_chain(conn)
    click.echo(verdict.describe())
    if not verdict.ok:
        sys.exit(1)
