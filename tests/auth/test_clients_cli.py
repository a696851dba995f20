"""`fhirimg clients ...` and the configuration rules of access control."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fhirimg.auth.clients import client_changes, get_client
from fhirimg.cli import main
from fhirimg.config import ConfigError, load_config
from fhirimg.store import make_engine


def run(*args, env=None):
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


def test_clients_are_added_listed_disabled_and_removed_and_every_change_is_recorded(tmp_path):
    env = {"FHIRIMG_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}", "FHIRIMG_VAR_DIR": str(tmp_path)}
    keygen = run("clients", "keygen", str(tmp_path / "k.pem"), env=env)
    assert keygen.exit_code == 0 and (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600
    (tmp_path / "k.jwks").write_text(keygen.output)
    added = run("clients", "add", "pacs", "--jwks", str(tmp_path / "k.jwks"), "--scopes", "system/ImagingStudy.rs",
                "--patient", "A", env=env)
    assert added.exit_code == 0, added.output
    assert "pacs\tenabled\tsystem/ImagingStudy.rs" in run("clients", "list", env=env).output
    assert run("clients", "add", "pacs", "--jwks", str(tmp_path / "k.jwks"), "--scopes", "system/*.rs",
               env=env).exit_code != 0  # exists: needs --replace
    assert run("clients", "disable", "pacs", env=env).exit_code == 0
    shown = json.loads(run("clients", "show", "pacs", env=env).output)
    assert shown["disabled"] is True and shown["patients"] == ["A"]
    assert [c["action"] for c in shown["changes"]] == ["add", "disable"]
    assert run("clients", "remove", "pacs", env=env).exit_code == 0
    engine = make_engine(env["FHIRIMG_DATABASE_URL"])
    assert get_client(engine, "pacs") is None
    assert [c["action"] for c in client_changes(engine, "pacs")] == ["add", "disable", "remove"]


@pytest.mark.parametrize("args, says", [
    (["--scopes", "system/*.dus"], "scopes"),
    (["--scopes", "openid"], "at least one resource scope"),
])
def test_bad_registrations_are_refused_with_the_reason(tmp_path, args, says):
    env = {"FHIRIMG_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    (tmp_path / "k.jwks").write_text(run("clients", "keygen", str(tmp_path / "k.pem"), env=env).output)
    result = run("clients", "add", "x", "--jwks", str(tmp_path / "k.jwks"), *args, env=env)
    assert result.exit_code != 0 and says in result.output


def test_a_private_key_in_a_registration_is_refused(tmp_path):
    env = {"FHIRIMG_DATABASE_URL": f"sqlite:///{tmp_path / 'c.db'}"}
    (tmp_path / "private.jwks").write_text(json.dumps({"keys": [{"kty": "EC", "kid": "k", "crv": "P-256",
                                                                  "x": "a", "y": "b", "d": "secret"}]}))
    result = run("clients", "add", "x", "--jwks", str(tmp_path / "private.jwks"), "--scopes", "system/*.rs", env=env)
    assert result.exit_code != 0 and "private" in result.output


def test_anonymous_mode_needs_allow_anonymous():
    with pytest.raises(ConfigError, match="allow_anonymous"):
        load_config(env={"FHIRIMG_AUTH__MODE": "none"}, read_files=False)
    assert load_config(env={"FHIRIMG_AUTH__MODE": "none", "FHIRIMG_AUTH__ALLOW_ANONYMOUS": "true"},
                       read_files=False)["auth"]["mode"] == "none"
    assert load_config(env={}, read_files=False)["auth"]["mode"] == "smart"  # the default
