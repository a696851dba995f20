"""`fhirimg replicate pull | push | status` (also registers the [replicate] config section)."""
from __future__ import annotations

import json
import logging
from dataclasses import asdict

import click

from .settings import adhoc_link, configured_links, parse_duration

log = logging.getLogger("fhirimg.replicate")


@click.group("replicate", context_settings={"help_option_names": ["-h", "--help"]})
def replicate() -> None:
    """Push/pull replication between FHIR servers over their _history."""


def _site(config_path):
    from ..cli import _load, _setup_logging
    from .runner import Site
    config = _load(config_path)
    _setup_logging(config)
    return Site(config)


def _types(value: str | None) -> list[str]:
    return [t.strip() for t in (value or "").split(",") if t.strip()]


def _every(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--every") from None


def describe_round(link, result) -> str:
    """One round of a link for people: what moved, and whether it reached the end."""
    if link.direction == "pull":
        moved = (f"{result.pages} pages, {result.applied} applied, {result.skipped} skipped, "
                 f"{result.conflicts} conflicts, {result.rejected} rejected")
    else:
        moved = f"{result.batches} batches, {result.sent} sent, {result.skipped} skipped, {result.rejected} rejected"
    state = "failed" if result.errors else ("caught up" if result.caught_up else "more to come")
    where = "from" if link.direction == "pull" else "to"
    return f"{link.name} ({link.direction} {where} {link.url}): {moved}; {state}"


def round_json(link, result) -> str:
    """One round of a link as one line of JSON (--json): the report's fields, named."""
    return json.dumps({"link": link.name, "direction": link.direction, "url": link.url, **asdict(result)})


def show_round(link, result, as_json: bool) -> None:
    click.echo(round_json(link, result) if as_json else describe_round(link, result))
    if result.errors:
        click.echo(f"{link.name}: FAILED: {result.errors[0]}", err=True)


def _run(site, link, every: float | None, as_json: bool = False) -> None:
    from .runner import run_link_every, run_link_once

    if every is None:
        result = run_link_once(site, link)
        show_round(link, result, as_json)
        if result.errors:
            raise SystemExit(1)
        return
    try:
        run_link_every(site, link, every, report=lambda result: show_round(link, result, as_json))
    except KeyboardInterrupt:
        pass


@replicate.command("pull")
@click.option("--source", required=True, help="FHIR base URL of the source, e.g. http://a:8080/fhir")
@click.option("--types", help="Comma-separated resource types (default: all supported).")
@click.option("--every", help="Poll on this interval (30s, 5m) until interrupted; default: once.")
@click.option("--name", help="Link name (keys the saved cursor); default derived from the URL.")
@click.option("--json", "as_json", is_flag=True, help="Each round as one line of JSON.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def pull(source, types, every, name, as_json, config_path) -> None:
    """Apply the source's changes since the saved cursor here, keeping ids and content."""
    site = _site(config_path)
    try:
        link = adhoc_link("pull", source, _types(types), _every(every) or 30.0, site.section, name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _run(site, link, _every(every), as_json)


@replicate.command("push")
@click.option("--destination", required=True, help="FHIR base URL of the destination.")
@click.option("--types", help="Comma-separated resource types (default: all supported).")
@click.option("--every", help="Push on this interval (30s, 5m) until interrupted; default: once.")
@click.option("--name", help="Link name (keys the saved cursor); default derived from the URL.")
@click.option("--json", "as_json", is_flag=True, help="Each round as one line of JSON.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def push(destination, types, every, name, as_json, config_path) -> None:
    """Send local changes since the saved cursor to the destination as transaction Bundles."""
    site = _site(config_path)
    try:
        link = adhoc_link("push", destination, _types(types), _every(every) or 30.0, site.section, name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _run(site, link, _every(every), as_json)


@replicate.command("run")
@click.option("--link", "names", multiple=True, help="Only this configured link (repeatable).")
@click.option("--once", is_flag=True, help="One round of each link, then exit (1 if any failed).")
@click.option("--json", "as_json", is_flag=True, help="Each round as one line of JSON.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def run(names, once, as_json, config_path) -> None:
    """Run the configured links in the foreground, each on its interval (no Redis needed)."""
    import threading

    from .runner import run_link_every, run_link_once
    site = _site(config_path)
    links = [link for link in configured_links(site.config) if link.enabled and (not names or link.name in names)]
    unknown = set(names) - {link.name for link in links}
    if unknown or not links:
        raise click.ClickException(f"no enabled configured link named {', '.join(sorted(unknown)) or '(any)'}")
    if once:
        results = [(link, run_link_once(site, link)) for link in links]
        for link, result in results:
            show_round(link, result, as_json)
        raise SystemExit(1 if any(r.errors for _, r in results) else 0)
    stop = threading.Event()
    threads = [threading.Thread(target=run_link_every, args=(site, link, link.interval, stop),
                                kwargs={"report": lambda r, k=link: show_round(k, r, as_json)}, daemon=True)
               for link in links]
    for thread in threads:
        thread.start()
    try:
        while any(t.is_alive() for t in threads):
            stop.wait(1.0)
    except KeyboardInterrupt:
        stop.set()


@replicate.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--offline", is_flag=True, help="Do not ask pull sources how far behind this site is.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def status(as_json, offline, config_path) -> None:
    """Each link's cursor, changes behind, lag, counters and last error."""
    from .client import RetryPolicy
    from .status import format_status, link_statuses
    site = _site(config_path)
    links = {link.name: link for link in configured_links(site.config)}
    rows = link_statuses(site.engine, links, RetryPolicy.from_section(site.section), live=not offline)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        click.echo(format_status(rows))
