"""``fhirimg clients ...`` (the client registry), ``fhirimg users ...`` (operator accounts for
SMART App Launch sign-in) and ``fhirimg token`` (a token for a client)."""
from __future__ import annotations

import getpass
import json
import os
import sys
import uuid
from pathlib import Path

import click
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .clients import Client, ClientError, add_client, client_changes, get_client, list_clients, remove_client, \
    set_disabled
from .outbound import BackendServicesClient, TokenRequestError, load_private_key
from .users import User, UserError, add_user, get_user, list_users, remove_user, set_password, set_user_disabled, \
    user_changes

DEV_CLIENT_ID = "fhirimg-dev"
DEV_CLIENT_FILE = "dev-client.json"
DEV_SCOPES = "system/*.cruds"


def _engine(config_path: str | None):
    from ..cli import _load
    from ..store import create_schema, make_engine
    from . import schema as _tables  # noqa: F401
    config = _load(config_path)
    engine = make_engine(config["database_url"])
    create_schema(engine)
    return config, engine


def actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def public_jwk(key, kid: str) -> dict:
    public = key.public_key() if hasattr(key, "public_key") else key
    algorithm = jwt.algorithms.ECAlgorithm if isinstance(public, ec.EllipticCurvePublicKey) else \
        jwt.algorithms.RSAAlgorithm
    return {**json.loads(algorithm.to_jwk(public)), "kid": kid}


def load_jwks_option(jwks_file: str | None, key_file: str | None, kid: str | None) -> dict | None:
    if jwks_file:
        return json.loads(Path(jwks_file).read_text())
    if key_file:
        data = Path(key_file).read_bytes()
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            key = serialization.load_pem_private_key(data, password=None)
        return {"keys": [public_jwk(key, kid or uuid.uuid4().hex[:16])]}
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # also when run as the root (tests)
def clients() -> None:
    """The clients that may get tokens from this server's /auth/token (SMART Backend Services)."""


@clients.command("add")
@click.argument("client_id")
@click.option("--scopes", required=True, help='The most a token may get, e.g. "system/*.rs system/Task.cu"; '
              'for an App Launch client e.g. "openid fhirUser online_access user/*.rs".')
@click.option("--name", help="A name for people (default: the client_id).")
@click.option("--jwks", "jwks_file", type=click.Path(exists=True, dir_okay=False), help="JWK Set file (public keys).")
@click.option("--jwks-url", help="URL of the client's JWK Set (preferred: the client can rotate keys).")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False),
              help="A PEM public (or private) key; its public part is registered.")
@click.option("--kid", help="Key id for --key (default: random; the client must send it).")
@click.option("--patient", "patients", multiple=True, help="Limit the client to this Patient id (repeatable).")
@click.option("--organization", "organizations", multiple=True,
              help="Limit the client to patients managed by this Organization id (repeatable).")
@click.option("--public", "public", is_flag=True,
              help="A browser app (SMART App Launch public client): no key, needs --redirect-uri.")
@click.option("--redirect-uri", "redirect_uris", multiple=True,
              help="Where sign-in may return to (App Launch; exact match; https, or http on loopback; "
                   "a path such as /app/callback means this server's own origin). Repeatable.")
@click.option("--replace", is_flag=True, help="Change an existing client.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def add(client_id, scopes, name, jwks_file, jwks_url, key_file, kid, patients, organizations, public, redirect_uris,
        replace, config_path):
    """Register (or with --replace, change) a client."""
    _, engine = _engine(config_path)
    client = Client(client_id, name or client_id, scopes, load_jwks_option(jwks_file, key_file, kid), jwks_url,
                    list(patients), list(organizations), public=public, redirect_uris=list(redirect_uris))
    try:
        add_client(engine, client, actor(), replace=replace)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(client.describe(), indent=2))


@clients.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def list_(config_path):
    """One line per client: id, state, scopes."""
    _, engine = _engine(config_path)
    for client in list_clients(engine):
        click.echo(f"{client.client_id}\t{'disabled' if client.disabled else 'enabled'}\t{client.scopes}"
                   + ("\tpublic" if client.public else ""))


@clients.command("show")
@click.argument("client_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def show(client_id, config_path):
    """A client's registration and every change made to it."""
    _, engine = _engine(config_path)
    client = get_client(engine, client_id)
    if client is None:
        raise click.ClickException(f"no client {client_id!r}")
    click.echo(json.dumps({**client.describe(), "changes": client_changes(engine, client_id)}, indent=2))


@clients.command("disable")
@click.argument("client_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def disable(client_id, config_path):
    """Refuse the client new tokens (tokens already issued expire within auth.token_lifetime)."""
    _change(config_path, lambda engine: set_disabled(engine, client_id, True, actor()))


@clients.command("enable")
@click.argument("client_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def enable(client_id, config_path):
    """Let a disabled client get tokens again."""
    _change(config_path, lambda engine: set_disabled(engine, client_id, False, actor()))


@clients.command("remove")
@click.argument("client_id")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def remove(client_id, config_path):
    """Delete a client (its change log stays)."""
    _change(config_path, lambda engine: remove_client(engine, client_id, actor()))


def _change(config_path, change) -> None:
    _, engine = _engine(config_path)
    try:
        change(engine)
    except ClientError as exc:
        raise click.ClickException(str(exc)) from None


@clients.command("keygen")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--kid", help="Key id (default: random).")
def keygen(out, kid):
    """Make an ES384 key pair for a client: the private key to OUT (mode 600), the public JWK Set printed."""
    key = ec.generate_private_key(ec.SECP384R1())
    write_private_key(Path(out), key)
    click.echo(json.dumps({"keys": [{**public_jwk(key, kid or uuid.uuid4().hex[:16]), "alg": "ES384"}]}, indent=2))


def keygen_files(private_path: Path) -> tuple[Path, str]:
    """An ES384 key at `private_path` and its JWK Set beside it (``.jwks``); returns (path, kid)."""
    key = ec.generate_private_key(ec.SECP384R1())
    kid = uuid.uuid4().hex[:16]
    write_private_key(private_path, key)
    private_path.with_suffix(".jwks").write_text(json.dumps({"keys": [{**public_jwk(key, kid), "alg": "ES384"}]}))
    return private_path, kid


def write_private_key(path: Path, key) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


# -- operator accounts (SMART App Launch sign-in) -----------------------------------------------
@click.group(context_settings={"help_option_names": ["-h", "--help"]})  # also when run as the root (tests)
def users() -> None:
    """Operator accounts that sign in at /auth/authorize (the console, the viewer, other SMART apps)."""


def read_password(from_stdin: bool) -> str:
    if from_stdin:  # one line, as `docker login --password-stdin` reads it
        return sys.stdin.readline().rstrip("\r\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


def _user_change(change) -> None:
    try:
        change()
    except UserError as exc:
        raise click.ClickException(str(exc)) from None


@users.command("add")
@click.argument("username")
@click.option("--scopes", default="user/*.rs", show_default=True,
              help='The most a token for this user may carry, e.g. "user/*.rs user/Task.cu".')
@click.option("--patient", "patients", multiple=True, help="Limit the user to this Patient id (repeatable).")
@click.option("--fhir-user", help="The FHIR resource that is this user (the id_token's fhirUser), "
              "e.g. Practitioner/123.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (else: prompt).")
@click.option("--replace", is_flag=True, help="Change an existing user (the password only with --password-stdin).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def users_add(username, scopes, patients, fhir_user, password_stdin, replace, config_path):
    """Create (or with --replace, change) an account; the password is stored as an Argon2id hash."""
    _, engine = _engine(config_path)
    user = User(username, scopes, list(patients), fhir_user)
    password = read_password(password_stdin) if password_stdin or not replace else None
    _user_change(lambda: add_user(engine, user, password, actor(), replace=replace))
    click.echo(json.dumps(user.describe(), indent=2))


@users.command("list")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def users_list(config_path):
    """One line per user: name, state, scopes."""
    _, engine = _engine(config_path)
    for user in list_users(engine):
        click.echo(f"{user.username}\t{'disabled' if user.disabled else 'enabled'}\t{user.scopes}")


@users.command("show")
@click.argument("username")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def users_show(username, config_path):
    """An account and every change made to it."""
    _, engine = _engine(config_path)
    user = get_user(engine, username)
    if user is None:
        raise click.ClickException(f"no user {username!r}")
    click.echo(json.dumps({**user.describe(), "changes": user_changes(engine, username)}, indent=2))


@users.command("passwd")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input (else: prompt).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def users_passwd(username, password_stdin, config_path):
    """Set a new password (the user's refresh tokens are revoked)."""
    _, engine = _engine(config_path)
    password = read_password(password_stdin)
    _user_change(lambda: set_password(engine, username, password, actor()))


@users.command("disable")
@click.argument("username")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def users_disable(username, config_path):
    """Refuse sign-in and refresh (access tokens already issued expire within auth.token_lifetime)."""
    _, engine = _engine(config_path)
    _user_change(lambda: set_user_disabled(engine, username, True, actor()))


@users.command("enable")
@click.argument("username")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def users_enable(username, config_path):
    """Let a disabled user sign in again."""
    _, engine = _engine(config_path)
    _user_change(lambda: set_user_disabled(engine, username, False, actor()))


@users.command("remove")
@click.argument("username")
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def users_remove(username, config_path):
    """Delete an account (its change log stays)."""
    _, engine = _engine(config_path)
    _user_change(lambda: remove_user(engine, username, actor()))


# -- the local development client of `fhirimg run` ----------------------------------------------
def ensure_dev_client(config: dict, engine) -> bool:
    """Register the one-machine development client (key under var/) unless it exists;
    returns whether it was made now."""
    var = Path(config["var_dir"])
    record = var / DEV_CLIENT_FILE
    if record.exists() and get_client(engine, DEV_CLIENT_ID) is not None:
        return False
    key = ec.generate_private_key(ec.SECP384R1())
    kid = uuid.uuid4().hex[:16]
    write_private_key(var / "dev-client-key.pem", key)
    add_client(engine, Client(DEV_CLIENT_ID, "fhirimg run: local development client", DEV_SCOPES,
                              {"keys": [{**public_jwk(key, kid), "alg": "ES384"}]}), "fhirimg run", replace=True)
    record.write_text(json.dumps({"client_id": DEV_CLIENT_ID, "kid": kid, "key": "dev-client-key.pem"}))
    return True


def default_base(config: dict) -> str:
    if config["base_url"]:
        return config["base_url"]
    host = config["serve"]["host"]
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{config['serve']['port']}/fhir"


@click.command()
@click.option("--base", help="FHIR base URL of the server (default: from the configuration).")
@click.option("--client-id", help="Registered client id (default: the development client of `fhirimg run`).")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False), help="The client's private key (PEM).")
@click.option("--kid", help="The key's kid as registered.")
@click.option("--scope", default=DEV_SCOPES, show_default=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False))
def token(base, client_id, key_file, kid, scope, config_path):
    """Print an access token from the server's /auth/token (SMART Backend Services)."""
    from ..cli import _load
    config = _load(config_path)
    if client_id is None:
        record_path = Path(config["var_dir"]) / DEV_CLIENT_FILE
        if not record_path.exists():
            raise click.ClickException(f"no {record_path}: start `fhirimg run` once (it registers a development "
                                       "client), or give --client-id, --key and --kid")
        record = json.loads(record_path.read_text())
        client_id, kid, key_file = record["client_id"], record["kid"], str(record_path.parent / record["key"])
    if not (key_file and kid):
        raise click.ClickException("--client-id needs --key and --kid")
    client = BackendServicesClient(client_id, load_private_key(key_file), kid, scope, (base or default_base(config)))
    try:
        click.echo(client.token())
    except (TokenRequestError, OSError) as exc:
        click.echo(f"fhirimg token: {exc}", err=True)
        sys.exit(1)
