"""Transfer commands of the ``fhirimg`` CLI. Importing this module registers the [transfer] section."""
from __future__ import annotations

import click

from . import settings  # noqa: F401 - registers the [transfer] configuration section


@click.command("transfer-report")
@click.argument("task_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def transfer_report(task_id: str, config_path: str | None) -> None:
    """Show a retrieve Task's step timings, counts and bytes as a small table."""
    from fhirimg.config import ConfigError, load_config
    from fhirimg.store import Repository, make_engine

    from .report import format_task_report
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    engine = make_engine(config["database_url"])
    try:
        stored = Repository(engine).read("Task", task_id)
    finally:
        engine.dispose()
    if stored is None or stored.is_deleted:
        raise click.ClickException(f"Task/{task_id} does not exist")
    click.echo(format_task_report(stored.resource))
