"""`database_url` is validated by the schema: a URL the storage layer cannot open stops
`check-config` (and `serve`) with one line naming the key, not a traceback at start-up."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from fhirimg.cli import main
from fhirimg.config import ConfigError, load_config


@pytest.mark.parametrize("url", ["mysql://x", "mysql://fhirimg:secret@db/fhirimg", "sqlite://",
                                 "postgresql+psycopg2://u@h/d", "var/fhirimg.db"])
def test_an_unsupported_database_url_is_refused_naming_the_key(url):
    with pytest.raises(ConfigError, match=r"database_url: must be sqlite:///PATH or postgresql\+psycopg://") as caught:
        load_config(env={"FHIRIMG_DATABASE_URL": url}, read_files=False)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize("url", ["sqlite:///var/fhirimg.db", "sqlite:////srv/fhirimg/fhirimg.db",
                                 "postgresql://postgres@127.0.0.1:5432/test",
                                 "postgresql+psycopg://fhirimg:secret@db.example.org:5432/fhirimg?sslmode=require"])
def test_the_two_supported_backends_pass(url):
    assert load_config(env={"FHIRIMG_DATABASE_URL": url}, read_files=False)["database_url"] == url


@pytest.mark.parametrize("command", [["check-config"], ["serve", "--dev"]])
def test_check_config_and_serve_stop_with_one_line(command, monkeypatch):
    monkeypatch.setenv("FHIRIMG_DATABASE_URL", "mysql://x")
    result = CliRunner().invoke(main, command)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("Error: invalid configuration: database_url: must be sqlite:///PATH")
    assert result.stderr.count("\n") == 1
