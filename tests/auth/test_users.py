"""`fhirimg users ...` (operator accounts), public clients in `fhirimg clients add`, and the
password hashes: Argon2id, re-hashed at sign-in when the parameters change."""
from __future__ import annotations

import json

import pytest
from argon2 import PasswordHasher
from click.testing import CliRunner
from sqlalchemy import text

from fhirimg.auth import schema as _tables  # noqa: F401
from fhirimg.auth import users as users_module
from fhirimg.auth.cli import clients, users
from fhirimg.auth.clients import ClientError, check_redirect_uri, get_client
from fhirimg.auth.users import User, UserError, add_user, get_user, user_changes, verify_password
from fhirimg.store import create_schema, make_engine

from .launch_support import PASSWORD, quick_hashing


@pytest.fixture
def env(tmp_path):
    return {"FHIRIMG_DATABASE_URL": f"sqlite:///{tmp_path / 'u.db'}", "FHIRIMG_VAR_DIR": str(tmp_path)}


def run(group, *args, env, input=None):
    return CliRunner().invoke(group, list(args), env=env, input=input, catch_exceptions=False)


def engine_of(env):
    engine = make_engine(env["FHIRIMG_DATABASE_URL"])
    create_schema(engine)
    return engine


def test_users_are_added_listed_changed_and_removed_and_every_change_is_recorded(env):
    added = run(users, "add", "alice", "--scopes", "user/*.rs user/Task.cu", "--fhir-user", "Practitioner/7",
                "--password-stdin", env=env, input=PASSWORD + "\n")
    assert added.exit_code == 0, added.output
    assert "alice\tenabled\tuser/*.rs user/Task.cu" in run(users, "list", env=env).output
    assert run(users, "add", "alice", "--password-stdin", env=env, input=PASSWORD + "\n").exit_code != 0  # exists
    assert run(users, "disable", "alice", env=env).exit_code == 0
    assert run(users, "enable", "alice", env=env).exit_code == 0
    assert run(users, "passwd", "alice", "--password-stdin", env=env, input="another long password\n").exit_code == 0
    shown = json.loads(run(users, "show", "alice", env=env).output)
    assert shown["fhir_user"] == "Practitioner/7" and shown["disabled"] is False
    assert [c["action"] for c in shown["changes"]] == ["add", "disable", "enable", "passwd"]
    assert run(users, "remove", "alice", env=env).exit_code == 0
    engine = engine_of(env)
    assert get_user(engine, "alice") is None
    assert [c["action"] for c in user_changes(engine, "alice")] == ["add", "disable", "enable", "passwd", "remove"]


def test_the_password_is_stored_as_an_argon2id_hash_and_never_in_the_change_log(env):
    assert run(users, "add", "bob", "--password-stdin", env=env, input=PASSWORD + "\n").exit_code == 0
    engine = engine_of(env)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM auth_user WHERE username = 'bob'")).scalar()
        log = str(conn.execute(text("SELECT * FROM auth_user_change")).all())
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert PASSWORD not in log and stored not in log
    assert verify_password(engine, "bob", PASSWORD).user.username == "bob"


def test_the_password_is_prompted_without_echo_and_confirmed(env):
    result = run(users, "add", "carol", env=env, input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output  # hidden input is not echoed
    mismatch = run(users, "add", "dave", env=env, input=f"{PASSWORD}\nsomething else entirely\n"
                   f"{PASSWORD}\n{PASSWORD}\n")
    assert "do not match" in mismatch.output


@pytest.mark.parametrize("args, says", [
    (["Alice"], "lower case"),
    (["x", "--scopes", "system/*.rs"], "user/"),
    (["x", "--scopes", "openid user/*.rs"], "client's"),
    (["x", "--scopes", "user/*.rs patient/*.rs"], "exactly one --patient"),
    (["x", "--fhir-user", "Organization/1"], "fhir user"),
    (["x", "--patient", "bad id!"], "Patient id"),
])
def test_bad_accounts_are_refused_with_the_reason(env, args, says):
    result = run(users, "add", *args, "--password-stdin", env=env, input=PASSWORD + "\n")
    assert result.exit_code != 0 and says in result.output


def test_a_short_password_is_refused(env):
    result = run(users, "add", "eve", "--password-stdin", env=env, input="short\n")
    assert result.exit_code != 0 and "at least 12" in result.output


def test_replace_changes_scopes_but_keeps_password_and_disabled_state(database, engine, monkeypatch):
    quick_hashing(monkeypatch)
    add_user(engine, User("frank", "user/*.rs"), PASSWORD, "tests")
    users_module.set_user_disabled(engine, "frank", True, "tests")
    add_user(engine, User("frank", "user/Patient.rs"), None, "tests", replace=True)
    frank = get_user(engine, "frank")
    assert frank.scopes == "user/Patient.rs" and frank.disabled
    users_module.set_user_disabled(engine, "frank", False, "tests")
    assert verify_password(engine, "frank", PASSWORD).user is not None


def test_a_hash_with_old_parameters_is_replaced_at_sign_in(database, engine, monkeypatch):
    quick_hashing(monkeypatch)
    add_user(engine, User("gina"), PASSWORD, "tests")
    stronger = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    monkeypatch.setattr(users_module, "hasher", lambda: stronger)
    assert verify_password(engine, "gina", PASSWORD).user is not None
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT password_hash FROM auth_user WHERE username = 'gina'")).scalar()
    assert "t=2" in stored and "m=2048" in stored and not stronger.check_needs_rehash(stored)
    assert [c["action"] for c in user_changes(engine, "gina")] == ["add", "rehash"]
    assert verify_password(engine, "gina", "not the password at all").user is None


def test_a_wrong_password_and_an_unknown_user_are_both_refused(database, engine, monkeypatch):
    quick_hashing(monkeypatch)
    add_user(engine, User("hank"), PASSWORD, "tests")
    assert verify_password(engine, "hank", "wrong password!!").reason == "wrong password"
    assert verify_password(engine, "nobody", PASSWORD).reason == "unknown user"
    assert verify_password(engine, "bad\x00name", PASSWORD).user is None


def test_the_servers_own_hasher_is_argon2id_at_rfc9106_strength():
    hasher = users_module.hasher()
    assert hasher.type.name == "ID" and hasher.memory_cost >= 19 * 1024 and hasher.time_cost >= 2


# -- public clients ------------------------------------------------------------------------------
def test_a_public_client_is_registered_with_its_redirect_uris(env):
    added = run(clients, "add", "my-app", "--public", "--scopes", "openid user/*.rs",
                "--redirect-uri", "https://app.example/cb", "--redirect-uri", "http://127.0.0.1:3000/cb", env=env)
    assert added.exit_code == 0, added.output
    client = get_client(engine_of(env), "my-app")
    assert client.public and client.redirect_uris == ["http://127.0.0.1:3000/cb", "https://app.example/cb"]
    assert "my-app\tenabled\topenid user/*.rs\tpublic" in run(clients, "list", env=env).output
    shown = json.loads(run(clients, "show", "my-app", env=env).output)
    assert shown["changes"][0]["details"]["redirect_uris"] == ["https://app.example/cb", "http://127.0.0.1:3000/cb"]


@pytest.mark.parametrize("args, says", [
    (["--public"], "redirect-uri"),
    (["--public", "--redirect-uri", "http://app.example/cb"], "loopback"),
    (["--public", "--redirect-uri", "https://*.example/cb"], "'*'"),
    (["--public", "--redirect-uri", "https://app.example/cb#x"], "fragment"),
    (["--public", "--redirect-uri", "app.example/cb"], "absolute"),
    (["--redirect-uri", "https://app.example/cb"], "--public"),  # no key and not public
])
def test_bad_public_registrations_are_refused(env, args, says):
    result = run(clients, "add", "x", "--scopes", "user/*.rs", *args, env=env)
    assert result.exit_code != 0 and says in result.output, result.output


def test_a_public_client_may_not_have_a_key(env, tmp_path):
    (tmp_path / "k.jwks").write_text(run(clients, "keygen", str(tmp_path / "k.pem"), env=env).output)
    result = run(clients, "add", "x", "--public", "--jwks", str(tmp_path / "k.jwks"), "--scopes", "user/*.rs",
                 "--redirect-uri", "https://app.example/cb", env=env)
    assert result.exit_code != 0 and "no key" in result.output


@pytest.mark.parametrize("uri", ["https://app.example/cb", "http://localhost:8080/cb", "http://[::1]/cb",
                                 "/console/callback", "https://app.example/cb?tenant=1"])
def test_good_redirect_uris(uri):
    check_redirect_uri(uri)


@pytest.mark.parametrize("uri", ["//evil.example/cb", "/a/../b", "javascript:alert(1)", "https://user:pw@app.example/",
                                 "https://app.example/c b", ""])
def test_bad_redirect_uris(uri):
    with pytest.raises(ClientError):
        check_redirect_uri(uri)


def test_a_user_error_is_a_value_error():
    with pytest.raises(UserError):
        users_module.check_user(User("ok", "system/*.rs"))
