"""Servers the benchmarks start for themselves, and the bearer token every benchmark sends.

A started server runs in smart mode like any other: the benchmark registers its own client
in the server's database and takes tokens from the server's token endpoint, so the figures
include access control as users run it. Against a server of yours, pass ``--token`` (or
``FHIRIMG_TOKEN``) to the bench group.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

TOKEN_ENV = "FHIRIMG_TOKEN"
_token_source = None  # a started server's BenchClient.token, else FHIRIMG_TOKEN


def use_token_source(source) -> None:
    global _token_source
    _token_source = source


def current_token() -> str | None:
    return _token_source() if _token_source is not None else os.environ.get(TOKEN_ENV) or None


def http_session() -> requests.Session:
    """A session that sends the benchmark's bearer token, if there is one (a fresh one from a
    started server's client, else FHIRIMG_TOKEN)."""
    session = requests.Session()
    session.trust_env = False
    session.headers.update(auth_headers())
    return session


def auth_headers() -> dict[str, str]:
    token = current_token()
    return {"Authorization": f"Bearer {token}"} if token else {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_serve(env: dict, workdir: Path, workers: int = 2) -> tuple[subprocess.Popen, str]:
    """`fhirimg serve` on a free loopback port; (process, FHIR base) once /metadata answers."""
    port = free_port()
    log = open(workdir / f"serve-{port}.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "fhirimg.cli", "serve", "--port", str(port),
                                "--workers", str(workers)], env=env, cwd=workdir, stdout=log,
                               stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/fhir"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                return process, base
        except requests.RequestException:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"fhirimg serve did not start within 60 s; see {workdir}")


class BenchClient:
    """A client registered in the server's database, with tokens renewed before they expire."""

    def __init__(self, database_url: str, workdir: Path, base: str, client_id: str = "fhirimg-bench"):
        from ..auth import schema as _tables  # noqa: F401
        from ..auth.cli import keygen_files
        from ..auth.clients import Client, add_client
        from ..store import create_schema, make_engine
        import json
        key_file, self.kid = keygen_files(workdir / f"{client_id}.pem")
        engine = make_engine(database_url)
        create_schema(engine)
        add_client(engine, Client(client_id, "benchmark", "system/*.cruds",
                                  json.loads(key_file.with_suffix(".jwks").read_text())), "fhirimg bench",
                   replace=True)
        engine.dispose()
        from ..auth.outbound import BackendServicesClient, load_private_key
        self.client = BackendServicesClient(client_id, load_private_key(str(key_file)), self.kid,
                                            "system/*.cruds", base)

    def token(self) -> str:
        return self.client.token()


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()


ANONYMOUS_ENV = {"FHIRIMG_AUTH__MODE": "none", "FHIRIMG_AUTH__ALLOW_ANONYMOUS": "true"}


class TwoServers:
    """The same server twice on one database, differing only in `sides` (label -> extra
    environment): smart and anonymous for bench crud --compare-auth, auditing on and off
    for --compare-audit. `populate` (database URL -> anything, kept as .population) writes
    the data before either starts: a server that wrote the data itself read it 0.3-0.7 ms
    faster per search than the other. A PostgreSQL `database_url` gets a private schema,
    dropped at the end."""

    def __init__(self, populate=None, sides: dict[str, dict] | None = None, database_url: str | None = None):
        self.populate = populate
        self.population = None
        self.sides = sides or {"smart": {}, "none": ANONYMOUS_ENV}
        self.given_url = database_url
        self.bases: dict[str, str] = {}
        self.processes: list[subprocess.Popen] = []
        self.clients: dict[str, BenchClient] = {}
        self.schema = None

    def __enter__(self) -> "TwoServers":
        self.dir = Path(tempfile.mkdtemp(prefix="fhirimg-bench-pair-"))
        database_url = self.private_database()
        if self.populate is not None:
            self.population = self.populate(database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
        env.update({"FHIRIMG_DATABASE_URL": database_url, "FHIRIMG_VAR_DIR": str(self.dir),
                    "FHIRIMG_LOG_LEVEL": "WARNING"})
        for label, extra in self.sides.items():
            process, self.bases[label] = start_serve({**env, **extra}, self.dir)
            self.processes.append(process)
            if extra.get("FHIRIMG_AUTH__MODE") != "none":  # a token per server: its own audience
                self.clients[label] = BenchClient(database_url, self.dir, self.bases[label],
                                                  client_id=f"fhirimg-bench-{label.replace(' ', '-')}")
        return self

    def private_database(self) -> str:
        if not self.given_url or not self.given_url.startswith("postgresql"):
            return f"sqlite:///{self.dir / 'bench.db'}"
        import uuid
        from urllib.parse import quote
        from sqlalchemy import create_engine, text
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        engine = create_engine(self.given_url.replace("postgresql://", "postgresql+psycopg://", 1))
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
        engine.dispose()
        joiner = "&" if "?" in self.given_url else "?"
        return f"{self.given_url}{joiner}options={quote(f'-csearch_path={self.schema}')}"

    def token(self, label: str = "smart") -> str | None:
        client = self.clients.get(label)
        return client.token() if client is not None else None

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            stop(process)
        if self.schema is not None:
            from sqlalchemy import create_engine, text
            engine = create_engine(self.given_url.replace("postgresql://", "postgresql+psycopg://", 1))
            with engine.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            engine.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)
