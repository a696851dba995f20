"""`fhirimg db current` and `fhirimg db upgrade` as an operator sees them: one line each,
exit 1 when fhirimg would refuse to start."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import inspect, text

from fhirimg.migrations import PACKAGED
from fhirimg.migrations.cli import db
from fhirimg.migrations.state import read_state
from fhirimg.store import create_schema

from .test_startup import LATER


def run(*args: str):
    return CliRunner().invoke(db, list(args))


def test_current_on_a_new_database_says_the_first_start_creates_it_and_creates_nothing(bare_engine, config_file):
    with bare_engine.connect():
        pass  # an empty database (SQLite: the file exists)
    result = run("current", "--config", str(config_file))
    assert (result.exit_code, result.output) == (
        0, f"no fhirimg tables yet: the first start creates them at {PACKAGED.head} (head)\n")
    assert inspect(bare_engine).get_table_names() == []


def test_current_on_a_current_database(bare_engine, config_file):
    create_schema(bare_engine)
    result = run("current", "--config", str(config_file))
    assert (result.exit_code, result.output) == (0, f"{PACKAGED.head} (head): the schema is current\n")


def test_current_on_a_release_database_says_to_upgrade(release_engine, config_file):
    result = run("current", "--config", str(config_file))
    assert result.exit_code == 1
    assert result.output.startswith("no revision: the database was made by a fhirimg release before versioned")
    assert result.output.rstrip().endswith("run `fhirimg db upgrade`") and result.output.count("\n") == 1


def test_current_on_a_newer_database_names_both_revisions(engine, config_file):
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0100_from_the_future'"))
    result = run("current", "--config", str(config_file))
    assert result.exit_code == 1
    assert result.output.startswith("0100_from_the_future: the database schema is at revision 0100_from_the_future,")
    assert f"(its newest is {PACKAGED.head})" in result.output


def test_an_older_revision_is_described_with_the_upgrade_command(engine):
    with engine.connect() as conn:
        line = read_state(conn, LATER).describe()
    assert line == (f"{PACKAGED.head}: the database schema is at revision {PACKAGED.head}, older than this "
                    "fhirimg's 0099_site_note: stop fhirimg's servers and workers, back up the database and run "
                    "`fhirimg db upgrade`")


def test_current_without_the_sqlite_file_says_where_it_looked(tmp_path):
    config = tmp_path / "fhirimg.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path}/missing.db"\n')
    result = run("current", "--config", str(config))
    assert result.exit_code == 1 and result.output.startswith(f"Error: no database at {tmp_path}/missing.db")
    assert not Path(tmp_path, "missing.db").exists()


def test_upgrade_of_a_new_database_creates_it_then_has_nothing_to_do(bare_engine, config_file):
    first = run("upgrade", "--config", str(config_file))
    assert (first.exit_code, first.output) == (0, f"created the schema at {PACKAGED.head} (head)\n")
    again = run("upgrade", "--config", str(config_file))
    assert (again.exit_code, again.output) == (0, f"already at {PACKAGED.head} (head); nothing to do\n")


def test_upgrade_of_an_unreachable_database_is_one_line(tmp_path):
    config = tmp_path / "fhirimg.toml"
    config.write_text('database_url = "postgresql://nobody@127.0.0.1:1/none"\n')
    result = run("upgrade", "--config", str(config))
    assert result.exit_code == 1 and result.output.startswith("Error: the upgrade failed and nothing was changed: ")
    assert result.output.count("\n") == 1
