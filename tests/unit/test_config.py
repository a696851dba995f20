"""Configuration: config/fhirimg.toml, FHIRIMG_* overrides, validation naming the key, masking."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from marshmallow import Schema, fields

from fhirimg import config as config_module
from fhirimg.cli import main
from fhirimg.config import ConfigError, load_config, masked

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "fhirimg.toml"


def defaults() -> dict:
    return load_config(env={}, read_files=False)


def key_paths(tree: dict, prefix: str = "") -> set[str]:
    out = set()
    for key, value in tree.items():
        out |= key_paths(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return out


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fhirimg.toml"
    path.write_text(text)
    return path


# --- the shipped file cannot drift from the schema -------------------------------------

def test_shipped_file_loads_to_exactly_the_defaults():
    assert load_config(SHIPPED, env={}) == defaults()


def test_shipped_file_names_every_setting_of_the_schema():
    with open(SHIPPED, "rb") as fh:
        in_file = key_paths(tomllib.load(fh))
    in_schema = key_paths({k: v for k, v in defaults().items() if k != "sections"})
    assert in_file == in_schema


def test_every_setting_in_the_shipped_file_has_a_comment():
    lines = SHIPPED.read_text().splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.lstrip().startswith("#"):
            assert lines[number - 1].lstrip().startswith("#"), f"no comment above line {number + 1}: {line}"


# --- where the file comes from ----------------------------------------------------------

def test_explicit_path_wins_over_fhirimg_config(tmp_path):
    explicit = write_toml(tmp_path, "log_level = 'DEBUG'\n")
    other = tmp_path / "other.toml"
    other.write_text("log_level = 'ERROR'\n")
    assert load_config(explicit, env={"FHIRIMG_CONFIG": str(other)})["log_level"] == "DEBUG"


def test_fhirimg_config_names_the_file(tmp_path):
    path = write_toml(tmp_path, "[serve]\nport = 9999\n")
    assert load_config(env={"FHIRIMG_CONFIG": str(path)})["serve"]["port"] == 9999


def test_config_file_in_working_directory_is_read_by_default(tmp_path, monkeypatch):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "fhirimg.toml").write_text("var_dir = 'elsewhere'\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(env={})["var_dir"] == "elsewhere"


def test_without_any_file_the_defaults_apply(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config(env={}) == defaults()


def test_missing_named_file_stops_start_up(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml", env={})


def test_invalid_toml_stops_start_up_naming_the_file(tmp_path):
    path = write_toml(tmp_path, "[serve\nport = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(path, env={})
    assert str(path) in str(caught.value)


# --- environment overrides --------------------------------------------------------------

def test_environment_overrides_a_top_level_key():
    url = "postgresql+psycopg://fhir@db.example.org:5432/fhir"
    assert load_config(env={"FHIRIMG_DATABASE_URL": url}, read_files=False)["database_url"] == url


def test_double_underscore_reaches_a_nested_key_and_is_typed():
    config = load_config(env={"FHIRIMG_SERVE__WORKERS": "7", "FHIRIMG_LIMITS__MAX_BODY_BYTES": "4096",
                              "FHIRIMG_SQL_ECHO": "true"}, read_files=False)
    assert config["serve"]["workers"] == 7
    assert config["serve"]["port"] == 8080  # siblings keep their value
    assert config["limits"]["max_body_bytes"] == 4096
    assert config["sql_echo"] is True


@pytest.mark.parametrize("value,expected", [("a,b", ["a", "b"]), ("only", ["only"]), (" a , b ,", ["a", "b"])])
def test_list_setting_from_environment_is_comma_separated(value, expected):
    assert load_config(env={"FHIRIMG_WORKER__QUEUES": value}, read_files=False)["worker"]["queues"] == expected


def test_environment_wins_over_file_and_overrides_win_over_environment(tmp_path):
    path = write_toml(tmp_path, "[serve]\nworkers = 2\nthreads = 3\n")
    config = load_config(path, env={"FHIRIMG_SERVE__WORKERS": "5"})
    assert (config["serve"]["workers"], config["serve"]["threads"]) == (5, 3)
    config = load_config(path, env={"FHIRIMG_SERVE__WORKERS": "5"}, overrides={"serve": {"workers": 6}})
    assert config["serve"]["workers"] == 6


def test_test_only_variables_are_not_configuration():
    config = load_config(env={"FHIRIMG_TEST_POSTGRES_URL": "postgresql://x/y",
                              "FHIRIMG_TEST_REQUIRE_SERVICES": "1"}, read_files=False)
    assert config == defaults()


# --- a bad value stops start-up with a message naming the key -----------------------------

@pytest.mark.parametrize("env,key", [
    ({"FHIRIMG_SERVE__WORKERS": "many"}, "serve.workers"),
    ({"FHIRIMG_SERVE__PORT": "70000"}, "serve.port"),
    ({"FHIRIMG_LOG_LEVEL": "LOUD"}, "log_level"),
    ({"FHIRIMG_BASE_URL": "http://example.org/fhir/"}, "base_url"),
    ({"FHIRIMG_SERVE__WORKRES": "2"}, "serve.workres"),
    ({"FHIRIMG_LIMITS__MAX_BODY_BYTES": "10"}, "limits.max_body_bytes"),
])
def test_bad_environment_value_is_reported_by_key(env, key):
    with pytest.raises(ConfigError) as caught:
        load_config(env=env, read_files=False)
    assert f"{key}:" in str(caught.value)


def test_bad_file_value_and_unknown_file_key_are_reported_by_key(tmp_path):
    path = write_toml(tmp_path, "colour = 'blue'\n[limits]\ndefault_page_size = 0\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    assert "colour:" in str(caught.value) and "limits.default_page_size:" in str(caught.value)


def test_registered_section_is_validated_and_its_errors_name_the_section(monkeypatch):
    class Demo(Schema):
        size = fields.Integer(load_default=1)
        names = fields.List(fields.String(), load_default=list)

    monkeypatch.setitem(config_module._SECTIONS, "demo", Demo)
    config = load_config(env={"FHIRIMG_DEMO__SIZE": "3", "FHIRIMG_DEMO__NAMES": "x,y"}, read_files=False)
    assert config["sections"]["demo"] == {"size": 3, "names": ["x", "y"]}
    with pytest.raises(ConfigError, match=r"demo\.size:"):
        load_config(env={"FHIRIMG_DEMO__SIZE": "big"}, read_files=False)


@pytest.mark.parametrize("command", ["check-config", "serve", "worker", "run"])
def test_cli_refuses_to_start_with_a_bad_value_naming_the_key(command):
    result = CliRunner().invoke(main, [command], env={"FHIRIMG_SERVE__THREADS": "0"})
    assert result.exit_code != 0
    assert "serve.threads:" in result.output


# --- check-config ------------------------------------------------------------------------

def test_check_config_prints_effective_values_with_password_masked():
    env = {"FHIRIMG_DATABASE_URL": "postgresql+psycopg://fhir:s3cr3t@db.example.org:5432/fhir",
           "FHIRIMG_REDIS_URL": "redis://:r3dis-pw@cache:6379/0", "FHIRIMG_SERVE__WORKERS": "3"}
    result = CliRunner().invoke(main, ["check-config"], env=env)
    assert result.exit_code == 0, result.output
    assert "s3cr3t" not in result.output and "r3dis-pw" not in result.output
    shown = json.loads(result.output)
    assert shown["database_url"] == "postgresql+psycopg://fhir:***@db.example.org:5432/fhir"
    assert shown["redis_url"] == "redis://:***@cache:6379/0"
    assert shown["serve"]["workers"] == 3


def test_check_config_reads_the_named_file(tmp_path):
    path = write_toml(tmp_path, "[serve]\nport = 8181\n")
    result = CliRunner().invoke(main, ["check-config", "--config", str(path)], env={})
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["serve"]["port"] == 8181


def test_secret_looking_keys_are_masked_at_any_depth():
    shown = masked({"a": {"api_token": "t0k", "password": "pw", "url": "https://u:p@h/x", "port": 1,
                          "empty_secret": ""}})
    assert shown == {"a": {"api_token": "***", "password": "***", "url": "https://u:***@h/x", "port": 1,
                           "empty_secret": ""}}
