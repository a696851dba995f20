"""What every process checks before it uses the database: a new one is created at the head,
an older, unversioned or newer one is refused with a line saying what to do."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from fhirimg.app import create_app
from fhirimg.migrations import PACKAGED, SchemaError, Scripts, current_state, ensure_schema, upgrade_schema
from fhirimg.store import create_schema, make_engine

REVISIONS = Path(__file__).parent / "revisions"
LATER = Scripts(extra_locations=(str(REVISIONS / "later"),))
FAILING = Scripts(extra_locations=(str(REVISIONS / "failing"),))


def versions(engine) -> list[str]:
    with engine.connect() as conn:
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()


def columns(engine, table: str) -> set[str]:
    return {column["name"] for column in inspect(engine).get_columns(table)}


def test_a_new_database_is_created_and_stamped_at_the_head(bare_engine):
    create_schema(bare_engine)
    assert versions(bare_engine) == [PACKAGED.head]
    assert {"resource_version", "audit_event", "audit_forward", "auth_user", "dicom_instance"} <= set(
        inspect(bare_engine).get_table_names())
    assert current_state(bare_engine).kind == "current"


def test_the_app_starts_on_a_new_database(bare_engine, config):
    create_app(config, engine=bare_engine)
    assert versions(bare_engine) == [PACKAGED.head]


def test_a_release_database_without_versions_is_refused_with_the_upgrade_command(release_engine, config):
    with pytest.raises(SchemaError) as refused:
        create_app(config, engine=release_engine)
    message = str(refused.value)
    assert "fhirimg db upgrade" in message and "\n" not in message
    assert "alembic_version" not in inspect(release_engine).get_table_names()  # nothing written


def test_a_schema_newer_than_this_fhirimg_is_refused_naming_both_revisions(engine, config):
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0100_from_the_future'"))
    with pytest.raises(SchemaError) as refused:
        create_app(config, engine=engine)
    assert "0100_from_the_future" in str(refused.value) and PACKAGED.head in str(refused.value)


def test_an_upgrade_does_not_touch_a_newer_schema(engine):
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0100_from_the_future'"))
    with pytest.raises(SchemaError, match="0100_from_the_future"):
        upgrade_schema(engine)
    assert versions(engine) == ["0100_from_the_future"]


def test_an_older_schema_is_refused_until_upgraded(engine):
    with pytest.raises(SchemaError) as refused:
        ensure_schema(engine, LATER)  # this "fhirimg" knows one revision more
    assert PACKAGED.head in str(refused.value) and "0099_site_note" in str(refused.value)
    assert "fhirimg db upgrade" in str(refused.value)
    done = upgrade_schema(engine, LATER)
    assert done.steps == ["0099_site_note: A revision after the packaged head, for the tests only: a nullable column."]
    assert "note" in columns(engine, "site_identity")
    assert ensure_schema(engine, LATER).kind == "current"
    assert versions(engine) == ["0099_site_note"]


def test_a_failing_revision_leaves_the_database_as_it_was(engine):
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO site_identity (id, site_id) VALUES (1, 'urn:uuid:kept')"))
    with pytest.raises(Exception, match="no_such_table"):
        upgrade_schema(engine, FAILING)
    assert versions(engine) == [PACKAGED.head]
    assert "half_done" not in inspect(engine).get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT site_id FROM site_identity")).scalar_one() == "urn:uuid:kept"


def test_processes_starting_together_on_a_new_database_create_it_once(database):
    url, schema = database
    engines = [make_engine(url, schema=schema) for _ in range(6)]
    start, failures = threading.Barrier(len(engines)), []

    def start_process(engine):
        start.wait()
        try:
            create_schema(engine)
        except Exception as exc:  # noqa: BLE001 - collected, asserted below
            failures.append(exc)

    threads = [threading.Thread(target=start_process, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    with engines[0].connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [PACKAGED.head]
        assert conn.execute(text("SELECT count(*) FROM change_counter")).scalar() == 1
        assert conn.execute(text("SELECT count(*) FROM audit_head")).scalar() == 1
    for engine in engines:
        engine.dispose()
