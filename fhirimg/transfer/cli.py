"""Transfer commands of the ``fhirimg`` CLI. Importing this module registers the [transfer] section."""
from __future__ import annotations

import click

from . import settings  # noqa: F401 - registers the [transfer] configuration section


@click.command("transfer-report")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON (null where the Task recorded nothing).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def transfer_report(task_id: str, as_json: bool, config_path: str | None) -> None:
    """Show a retrieve Task's step timings, counts and bytes as a small table.

    Reads the configured database (found as by every command: --config, FHIRIMG_CONFIG, else
    config/fhirimg.toml in the working directory) and never creates one.
    """
    import json

    from sqlalchemy.exc import SQLAlchemyError

    from fhirimg.cli import _load, database_error, open_existing_database
    from fhirimg.store import Repository

    from .report import format_task_report, task_report
    config = _load(config_path)
    engine = open_existing_database(config)
    try:
        stored = Repository(engine).read("Task", task_id)
    except SQLAlchemyError as exc:
        raise database_error(exc, config) from None
    finally:
        engine.dispose()
    if stored is None or stored.is_deleted:
        raise click.ClickException(f"Task/{task_id} does not exist")
    click.echo(json.dumps(task_report(stored.resource), indent=2) if as_json else format_task_report(stored.resource))
