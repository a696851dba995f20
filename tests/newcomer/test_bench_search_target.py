"""`fhirimg bench search` seeds a million studies: never into the configured database (the
dev server's own data) unless asked, with --database-url or --yes."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from fhirimg.bench import search as search_bench
from fhirimg.cli import main


class Seeded(Exception):
    """Raised instead of seeding: the test only needs to know where seeding would go."""


@pytest.fixture
def seeding(tmp_path, monkeypatch):
    """The configured database is the default one of a fresh directory; seeding is recorded
    and stopped there."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("FHIRIMG_")]:
        monkeypatch.delenv(name)
    targets: list[str] = []

    def seed_population(repo, *args, **kwargs):
        targets.append(repo.engine.url.render_as_string(hide_password=False))
        raise Seeded

    monkeypatch.setattr(search_bench, "seed_population", seed_population)
    return targets


def test_without_database_url_or_yes_nothing_is_seeded_or_created(seeding, tmp_path):
    result = CliRunner().invoke(main, ["bench", "search", "--studies", "10"])
    assert result.exit_code == 2, result.output
    assert "--database-url" in result.stderr and "--yes" in result.stderr
    assert seeding == [] and not (tmp_path / "var").exists()


def test_yes_seeds_the_configured_database(seeding, tmp_path):
    result = CliRunner().invoke(main, ["bench", "search", "--studies", "10", "--yes"])
    assert isinstance(result.exception, Seeded)
    assert seeding == ["sqlite:///var/fhirimg.db"]


def test_database_url_seeds_that_database(seeding, tmp_path):
    url = f"sqlite:///{tmp_path / 'scratch.db'}"
    result = CliRunner().invoke(main, ["bench", "search", "--studies", "10", "--database-url", url])
    assert isinstance(result.exception, Seeded)
    assert seeding == [url]
