"""The `fhirimg` command: run, serve, worker, load, check-config, bench."""
from __future__ import annotations

import json
import logging
import sys

import click

from .bench import BASE_HELP  # the package only; each benchmark is imported when registered
from .config import ConfigError, load_config, masked
from . import metrics as _metrics  # noqa: F401  (registers the [metrics] configuration section)
from .push import settings as _push_settings  # noqa: F401  (registers [push])
from .subscriptions import settings as _subscription_settings  # noqa: F401  (registers [subscriptions])
from .dimse import settings as _dicom_settings  # noqa: F401  (registers [dicom])


def _load(config_path: str | None) -> dict:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def open_existing_database(config: dict):
    """An engine on the configured database for a command that only reads it. A missing
    SQLite file is an error that says where it was looked for: opening it would create an
    empty database (and var/) wherever the command happens to run."""
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from .store import make_engine
    url = make_url(config["database_url"])
    path = Path(url.database or "")
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:") and not path.is_file():
        relative = "" if path.is_absolute() else f", relative to the working directory {Path.cwd()}"
        raise click.ClickException(
            f"no database at {path.absolute()} (database_url {config['database_url']}{relative}): run it in "
            "the directory you run `fhirimg run` in, or name the configuration with --config or FHIRIMG_CONFIG")
    return make_engine(config["database_url"])


def database_error(exc: Exception, config: dict) -> click.ClickException:
    """A database failure of a CLI command as one line (the driver's first line, no traceback)."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return click.ClickException(f"cannot read {masked({'url': config['database_url']})['url']}: {reason}")


def _setup_logging(config: dict) -> None:
    logging.basicConfig(level=config["log_level"],
                        format="%(asctime)s %(levelname)s %(name)s %(process)d: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """fhirimg: a FHIR R5 imaging exchange server."""


@main.command("check-config")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def check_config(config_path: str | None) -> None:
    """Validate the configuration and print the effective values, secrets masked."""
    config = _load(config_path)
    click.echo(json.dumps(masked(config), indent=2, sort_keys=True))


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--dev", is_flag=True, help="Flask's development server (one process, auto-reload off).")
@click.option("--host", help="Listen address (default from config: serve.host).")
@click.option("--port", type=int, help="Listen port (default from config: serve.port).")
@click.option("--workers", type=int, help="gunicorn worker processes (default from config: serve.workers).")
def serve(config_path, dev, host, port, workers) -> None:
    """Serve the FHIR API at http://HOST:PORT/fhir (gunicorn unless --dev)."""
    from .serve import serve_dev, serve_gunicorn
    config = _load(config_path)
    _setup_logging(config)
    serve_config = dict(config["serve"], **{k: v for k, v in
                                            {"host": host, "port": port, "workers": workers}.items() if v})
    (serve_dev if dev else serve_gunicorn)(config, serve_config)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
@click.option("--burst", is_flag=True, help="Exit when the queues are empty.")
def worker(config_path, burst) -> None:
    """Run an RQ worker on the configured queues (urgent first)."""
    from .worker import run_worker
    config = _load(config_path)
    _setup_logging(config)
    if not config["redis_url"]:
        raise click.ClickException("FHIRIMG_REDIS_URL (redis_url) must name the Redis server for a worker")
    run_worker(config, burst=burst)


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def run(config_path) -> None:
    """Everything on one machine: a private Redis under var/, one worker, and the server."""
    from .embedded import run_embedded
    config = _load(config_path)
    _setup_logging(config)
    sys.exit(run_embedded(config, config_path))


def configured_base(config_path: str | None) -> str:
    """The FHIR base of the server this configuration describes: base_url, else
    http://serve.host:serve.port/fhir (what `fhirimg token` asks too)."""
    from .auth.cli import default_base
    return default_base(_load(config_path))


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--base", help=BASE_HELP)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--token", envvar="FHIRIMG_TOKEN", help="Bearer token (or FHIRIMG_TOKEN); see `fhirimg token`.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def load(paths, base, quiet, token, config_path) -> None:
    """Send resources and Bundles from JSON/NDJSON files or directories to a FHIR server.

    Transaction and batch Bundles are POSTed to the base; a resource with an id is PUT
    (keeping its id), one without is POSTed, each as a batch of one entry. Prints how many
    resources the server created, updated and left unchanged; exits 1 if anything failed.
    """
    from .loader import ServerUnreachable, load_paths
    base = base or configured_base(config_path)
    try:
        summary = load_paths(list(paths), base, progress=not quiet, token=token)
    except ServerUnreachable as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(summary.describe())
    if summary.failed:
        sys.exit(1)


def _register_auth_commands() -> None:
    from .auth import cli as auth_cli  # the client registry and `fhirimg token`
    main.add_command(auth_cli.clients)
    main.add_command(auth_cli.users)
    main.add_command(auth_cli.token)
    from .audit import cli as audit_cli  # the audit trail's chain check
    main.add_command(audit_cli.audit)


_register_auth_commands()


def _register_viewer_commands() -> None:
    from .viewer import cli as viewer_cli  # `fhirimg viewer install`; registers [viewer]
    main.add_command(viewer_cli.viewer)
    from .migrations import cli as migrations_cli  # schema revisions: db upgrade, db current
    main.add_command(migrations_cli.db)


_register_viewer_commands()


def _register_replicate_commands() -> None:
    from .replicate import cli as replicate_cli  # also registers the [replicate] config section
    main.add_command(replicate_cli.replicate)


_register_replicate_commands()


def _register_subscription_commands() -> None:
    from .subscriptions import cli as subscriptions_cli  # status, the websocket listener
    main.add_command(subscriptions_cli.subscriptions)


_register_subscription_commands()


@main.group()
@click.option("--token", envvar="FHIRIMG_TOKEN", help="Bearer token the benchmarks send to a server of yours "
              "(or FHIRIMG_TOKEN); servers a benchmark starts itself get tokens on their own.")
def bench(token: str | None) -> None:
    """Benchmarks that print figures you can compare."""
    if token:
        import os
        os.environ["FHIRIMG_TOKEN"] = token


def _register_bench_commands() -> None:
    from .bench import crud
    bench.add_command(crud.command)
    from .bench import history as history_bench  # history: page latency by depth; replication catch-up and lag
    bench.add_command(history_bench.history_command)
    bench.add_command(history_bench.replicate_command)
    from .bench import retrieve  # transfer: the three steps vs plain GETs
    bench.add_command(retrieve.command)
    from .bench import ingest  # push: transaction-Bundle ingest vs raw store
    bench.add_command(ingest.command)
    from .bench import push as push_bench  # image push: STOW-RS / C-STORE vs Orthanc's ingest
    bench.add_command(push_bench.command)
    from .bench import search as search_bench  # search: seeded population, EXPLAIN, query mix
    bench.add_command(search_bench.command)
    from .bench import subscriptions as subscriptions_bench  # commit -> rest-hook delivery latency
    bench.add_command(subscriptions_bench.command)
    from .bench import dicomweb as dicomweb_bench  # DICOMweb small-request latency vs Orthanc
    bench.add_command(dicomweb_bench.command)
    from .bench import slowloris  # hardening: normal latency while slow clients hold connections
    bench.add_command(slowloris.command)


_register_bench_commands()


def _register_transfer_commands() -> None:
    from .transfer import cli as transfer_cli  # also registers the [transfer] config section
    main.add_command(transfer_cli.transfer_report)
    from .blobs import cli as blobs_cli  # verify, fsck, migrate; registers [blobs]
    main.add_command(blobs_cli.blobs)
    from .dimse import cli as dimse_cli  # the DICOM listener (C-STORE and C-ECHO SCP)
    main.add_command(dimse_cli.dicom_listener)


_register_transfer_commands()

if __name__ == "__main__":
    main()
