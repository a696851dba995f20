"""Two `fhirimg serve` processes on one SQLite database, one in smart mode and one anonymous,
for `bench crud --compare-auth`: the only difference between them is access control."""
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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TwoServers:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="fhirimg-bench-auth-"))
        self.processes: list[subprocess.Popen] = []
        self._token: tuple[str, float] | None = None

    def __enter__(self) -> "TwoServers":
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
        env.update({"FHIRIMG_DATABASE_URL": f"sqlite:///{self.dir / 'bench.db'}", "FHIRIMG_VAR_DIR": str(self.dir),
                    "FHIRIMG_LOG_LEVEL": "WARNING", "FHIRIMG_SERVE__WORKERS": "2"})
        self.smart = self._start(env, {})
        self.anonymous = self._start(env, {"FHIRIMG_AUTH__MODE": "none", "FHIRIMG_AUTH__ALLOW_ANONYMOUS": "true"})
        self._register_client(env)
        return self

    def _start(self, env: dict, extra: dict) -> str:
        port = free_port()
        log = open(self.dir / f"serve-{port}.log", "wb")
        command = [sys.executable, "-m", "fhirimg.cli", "serve", "--port", str(port)]
        self.processes.append(subprocess.Popen(command, env={**env, **extra}, cwd=self.dir, stdout=log,
                                               stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}/fhir"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{base}/metadata", timeout=1).status_code == 200:
                    return base
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError(f"fhirimg serve did not start; see {self.dir}")

    def _register_client(self, env: dict) -> None:
        from ..auth.cli import keygen_files
        self.key_file, self.kid = keygen_files(self.dir / "bench.pem")
        subprocess.run([sys.executable, "-m", "fhirimg.cli", "clients", "add", "bench", "--jwks",
                        str(self.dir / "bench.jwks"), "--scopes", "system/*.cruds"],
                       env=env, cwd=self.dir, check=True, capture_output=True)

    def token(self) -> str:
        """A token from the smart server, renewed before it expires."""
        if self._token is None or time.time() > self._token[1] - 30:
            from ..auth.outbound import BackendServicesClient, load_private_key
            client = BackendServicesClient("bench", load_private_key(str(self.key_file)), self.kid,
                                           "system/*.cruds", self.smart)
            self._token = (client.token(), time.time() + 300)
        return self._token[0]

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

