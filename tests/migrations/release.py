"""Databases made by the last release before versioned migrations (commit c06edf0).

The fixtures are dumps of databases that release's own code created and filled through its
own API (fixtures/fill_release.py), with what it answered (the .json files): the tests
expect those answers after an upgrade. Dumps, not a checkout at test time, so the tests
need neither that release's dependencies nor git history. Regenerate them with

    .venv/bin/python -m tests.migrations.release

(it adds a git worktree of c06edf0 under /tmp, runs the release there, and removes it).
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

RELEASE = "c06edf0"
FIXTURES = Path(__file__).parent / "fixtures"
PG_SCHEMA = f"fhirimg_release_{RELEASE}"  # the dump's schema name, replaced on loading
REPO = Path(__file__).resolve().parents[2]


def dump_path(backend: str) -> Path:
    return FIXTURES / f"release-{RELEASE}.{backend}.sql"


def expected_answers(backend: str) -> dict:
    """What the release answered over its API once the data was written."""
    return json.loads((FIXTURES / f"release-{RELEASE}.{backend}.json").read_text())


def load_release_database(backend: str, url: str, schema: str | None) -> None:
    """Restore the release's database into the test's empty database."""
    script = dump_path(backend).read_text()
    if backend == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.executescript(script)
        return
    import psycopg
    with psycopg.connect(url) as conn:  # one transaction; the dump names its schema in full
        conn.execute(script.replace(PG_SCHEMA, schema).encode())


def _run_release(worktree: Path, url: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(worktree))
    out = subprocess.run([sys.executable, str(FIXTURES / "fill_release.py"), url], cwd=worktree, env=env,
                         check=True, capture_output=True, text=True).stdout
    answers = json.loads(out)
    assert answers.pop("release_file").startswith(str(worktree)), "the release's code did not run"
    return answers


def _dump_postgres(url: str) -> str:
    """pg_dump of the release's schema, with plain INSERTs, minus what a restore into
    another schema must not run (the schema's creation, psql meta-commands)."""
    out = subprocess.run(["pg_dump", "--dbname", url, "--schema", PG_SCHEMA, "--inserts", "--no-owner",
                          "--no-privileges", "--no-comments"], check=True, capture_output=True, text=True).stdout
    keep = [line for line in out.splitlines()
            if not line.startswith("\\") and line != f"CREATE SCHEMA {PG_SCHEMA};"]
    return "\n".join(keep) + "\n"


def _make_sqlite(worktree: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "release.db"
        answers = _run_release(worktree, f"sqlite:///{path}")
        with sqlite3.connect(path) as conn:
            script = "\n".join(conn.iterdump()) + "\n"
    dump_path("sqlite").write_text(script)
    (FIXTURES / f"release-{RELEASE}.sqlite.json").write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")


def _make_postgres(worktree: Path, url: str) -> None:
    import psycopg
    from urllib.parse import quote
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE')
        conn.execute(f'CREATE SCHEMA "{PG_SCHEMA}"')
    try:
        answers = _run_release(worktree, f"{url}?options={quote('-csearch_path=' + PG_SCHEMA)}")
        dump_path("postgres").write_text(_dump_postgres(url))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{PG_SCHEMA}" CASCADE')
    (FIXTURES / f"release-{RELEASE}.postgres.json").write_text(json.dumps(answers, indent=1, sort_keys=True) + "\n")


def main() -> None:
    url = os.environ.get("FHIRIMG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    with tempfile.TemporaryDirectory(prefix=f"fhirimg-{RELEASE}-") as tmp:
        worktree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), RELEASE], check=True)
        try:
            _make_sqlite(worktree)
            _make_postgres(worktree, url)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=True)


if __name__ == "__main__":
    main()
