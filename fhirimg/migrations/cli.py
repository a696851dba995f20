"""``fhirimg db ...``: the database schema's revision, and upgrading it."""
from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # also when run as the root (tests)
def db() -> None:
    """The database schema: its revision and upgrades (Alembic revisions shipped with fhirimg)."""


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@db.command("upgrade")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def upgrade(config_path: str | None) -> None:
    """Bring the schema to this fhirimg's newest revision, in one transaction.

    A database made by the release before versioned migrations is checked against it and
    adopted first. Stop the servers and workers and back the database up before running it.
    """
    from sqlalchemy.exc import DBAPIError

    from ..cli import _load
    from ..store import make_engine
    from .upgrade import upgrade_schema
    engine = make_engine(_load(config_path)["database_url"], pool_size=1)
    try:
        click.echo(upgrade_schema(engine).describe())
    except click.ClickException:  # SchemaError: already one line
        raise
    except DBAPIError as exc:
        raise click.ClickException(f"the upgrade failed and nothing was changed: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a revision failing: the transaction is rolled back
        raise click.ClickException(f"the upgrade failed and nothing was changed: {type(exc).__name__}: "
                                   f"{_first_line(exc)}") from None
    finally:
        engine.dispose()


@db.command("current")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def current(config_path: str | None) -> None:
    """Print the schema's revision and whether it is current; exit 1 if fhirimg would refuse to start."""
    from sqlalchemy.exc import DBAPIError

    from ..cli import _load, database_error, open_existing_database
    from .state import current_state
    config = _load(config_path)
    engine = open_existing_database(config)  # a missing SQLite file is an error, not created
    try:
        state = current_state(engine)
    except DBAPIError as exc:
        raise database_error(exc, config) from None
    finally:
        engine.dispose()
    click.echo(state.describe())
    if state.refusal():
        sys.exit(1)
