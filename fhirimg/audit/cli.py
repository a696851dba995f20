"""``fhirimg audit ...``: the audit trail's own commands."""
from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # also when run as the root (tests)
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


def _open(config_path):
    """(config, engine) with every audit table created: the chain's, the export watermark's
    and the forward cursors' (forward imports retention and cursors, which registers them)."""
    from ..cli import _load
    from ..store import create_schema, make_engine
    from . import forward as _forward  # noqa: F401  (registers the watermark and cursor tables)
    config = _load(config_path)
    engine = make_engine(config["database_url"])
    create_schema(engine)
    return config, engine


def _cli_actor(engine, config):
    from .events import Actor
    from .portable import local_site
    return Actor("fhirimg-cli", local_site(engine, config))


def _date_bound(value: str | None, name: str, high: bool) -> int:
    from ..search.dates import MAX_MS, MIN_MS, BadDate, date_range
    if value is None:
        return MAX_MS if high else MIN_MS
    try:
        low, upper = date_range(value)
    except BadDate as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None
    return upper if high else low


@audit.command("export")
@click.option("--since", required=True, help="FHIR date or dateTime: events recorded at or after it.")
@click.option("--until", default=None, help="FHIR date or dateTime: events recorded up to its end (default: now).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="NDJSON file to write (default: standard output).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def export(since, until, out_path, config_path) -> None:
    """Write the AuditEvents recorded in a time range as NDJSON, in seq order.

    Each line is one AuditEvent with id = its seq, meta.lastUpdated = its recorded time and
    the chain fields in the extension https://fhirimg.org/fhir/StructureDefinition/audit-chain
    ("seq:prev_hash:row_hash"), so anyone can re-verify it. Raises the export watermark
    (what `prune` may remove) over the events exported without a gap from the chain's
    start, and records the export itself as an AuditEvent. The summary goes to stderr.
    """
    from .retention import export_audit
    since_ms, until_ms = _date_bound(since, "--since", False), _date_bound(until, "--until", True)
    config, engine = _open(config_path)
    actor = _cli_actor(engine, config)
    if out_path is None:
        out = click.get_text_stream("stdout")
        result = export_audit(engine, out, since_ms, until_ms, actor, flush=out.flush)
    else:
        with open(out_path, "w", encoding="utf-8") as out:
            result = export_audit(engine, out, since_ms, until_ms, actor, flush=lambda: _sync(out))
    click.echo(result.describe(), err=True)


def _sync(out) -> None:
    """The file is on disk before the watermark says it was exported."""
    import os
    out.flush()
    os.fsync(out.fileno())


@audit.command("prune")
@click.option("--dry-run", is_flag=True, help="Say what would be pruned; change nothing.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def prune(dry_run, config_path) -> None:
    """Remove events older than audit.retention_days that an export already holds.

    Never an event above the export watermark (they are counted as kept back). One
    transaction adds the retention anchor (the last pruned event's hash, where `verify`
    starts), deletes the events and records the prune as an AuditEvent.
    Exit 1 when retention_days is 0 (keep for ever).
    """
    from .retention import RetentionDisabled, prune_audit
    config, engine = _open(config_path)
    try:
        plan = prune_audit(engine, config["audit"]["retention_days"], _cli_actor(engine, config), dry_run=dry_run)
    except RetentionDisabled as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(plan.describe(dry_run))


@audit.command("forward")
@click.option("--once", is_flag=True, help="One round now (back-off ignored), then exit; 1 if a target failed.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def forward(once, config_path) -> None:
    """Send new events to the [[audit.forward]] targets (the worker does this when they are configured)."""
    from ..cli import _setup_logging
    from .forward import Forwarder, run_forward_round
    config, engine = _open(config_path)
    _setup_logging(config)
    if not config["audit"]["forward"]:
        raise click.ClickException("no [[audit.forward]] targets are configured")
    if not once:
        try:
            Forwarder(config, engine).run()  # until interrupted
        except KeyboardInterrupt:
            pass
        return
    results = run_forward_round(engine, config, force=True)
    for r in results:
        click.echo(f"{r.target}: {r.status}, {r.sent} sent, through seq {r.through_seq}"
                   + (f": {r.error}" if r.error else ""))
    if any(r.status == "failed" for r in results):
        sys.exit(1)


@audit.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def status(as_json, config_path) -> None:
    """Event count and head hash (from the head row, no walk: see `verify`), oldest and newest,
    retention, export watermark, anchor, and each forward target's cursor, backlog and errors.

    Exit 1 when any forward target is failing (failures > 0), so monitoring can call it.
    """
    import json

    from .status import audit_status
    config, engine = _open(config_path)
    state = audit_status(engine, config)
    click.echo(json.dumps(state.to_json(), indent=2) if as_json else state.describe())
    if state.is_failing:
        sys.exit(1)
