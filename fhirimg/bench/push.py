"""``fhirimg bench push``: images pushed into fhirimg (STOW-RS or C-STORE) against Orthanc
ingesting the same files, and the disk's write+fsync ceiling, in the same run.

A synthetic study (default 1 000 CT instances of 512x512x16-bit, ~0.5 MB each) is written
once to a temporary directory. Each repeat starts a fresh fhirimg (``fhirimg serve``, and
``fhirimg dicom-listener`` for C-STORE, on a private SQLite database and blob store) and a
fresh Orthanc (``SyncStorageArea: true``, so both sides make every file durable), then:

- ``--source stow``: fhirimg takes the files as STOW-RS requests of ``--batch`` instances,
  ``--clients`` requests at a time; Orthanc takes them with ``POST /instances`` (its native
  ingest, one file per request) on as many threads.
- ``--source cstore``: dcmtk's ``storescu`` sends all files on one association, to fhirimg's
  listener and to Orthanc's DICOM port alike (the sender is the same program both times).

Ratios are fhirimg throughput / peer throughput (above 1.0: fhirimg is faster).
"""
from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click
import requests

from .retrieve import baseline_durable_writes
from .retrieve_source import PrivateOrthanc, free_port, synthetic_instance

BENCH_AET = "FHIRIMGBENCH"


@dataclass
class Push:
    seconds: float
    nbytes: int
    instances: int

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


def write_study(directory: Path, instances: int, rows: int, series: int) -> list[Path]:
    from pydicom.uid import generate_uid
    study_uid = generate_uid()
    series_uids = [generate_uid() for _ in range(series)]
    paths = []
    for index in range(instances):
        s = index % series
        path = directory / f"{index:05d}.dcm"
        path.write_bytes(synthetic_instance(study_uid, series_uids[s], s + 1, index // series + 1, rows))
        paths.append(path)
    return paths


def multipart_body(paths: list[Path], boundary: str) -> bytes:
    parts = [b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n"
             for p in paths]
    return b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"


# -- fhirimg ----------------------------------------------------------------------------------------
class Fhirimg:
    """`fhirimg serve` (and the DICOM listener) on a fresh database and blob store."""

    def __init__(self, workdir: Path, listener: bool, extra_env: dict | None = None):
        self.workdir = workdir
        self.http_port, self.dicom_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
        env.update({"FHIRIMG_DATABASE_URL": f"sqlite:///{workdir / 'fhirimg.db'}", "FHIRIMG_VAR_DIR": str(workdir / "var"),
                    "FHIRIMG_AUTH__MODE": "none", "FHIRIMG_AUTH__ALLOW_ANONYMOUS": "true",
                    "FHIRIMG_LOG_LEVEL": "WARNING", **(extra_env or {})})
        config = workdir / "fhirimg.toml"
        config.write_text(f'[dicom]\nport = {self.dicom_port}\nae_title = "FHIRIMG"\n'
                          f'[[dicom.callers]]\nae_title = "{BENCH_AET}"\nhosts = ["127.0.0.1"]\n')
        env["FHIRIMG_CONFIG"] = str(config)
        self.log = open(workdir / "fhirimg.log", "wb")
        command = [sys.executable, "-m", "fhirimg.cli"]
        self.processes = [subprocess.Popen(command + ["serve", "--port", str(self.http_port), "--workers", "2"],
                                           env=env, cwd=workdir, stdout=self.log, stderr=subprocess.STDOUT)]
        self.url = f"http://127.0.0.1:{self.http_port}"
        wait_http(f"{self.url}/fhir/metadata", self.processes[0])
        if listener:
            self.processes.append(subprocess.Popen(command + ["dicom-listener"], env=env, cwd=workdir,
                                                   stdout=self.log, stderr=subprocess.STDOUT))
            wait_port(self.dicom_port, self.processes[-1])

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.log.close()


def stow_push(url: str, paths: list[Path], batch: int, clients: int) -> Push:
    batches = [paths[i:i + batch] for i in range(0, len(paths), batch)]
    bodies = [multipart_body(b, f"bench{i}") for i, b in enumerate(batches)]  # built before the clock starts
    session = requests.Session()
    session.trust_env = False

    def send(index: int) -> None:
        response = session.post(f"{url}/dicom-web/studies", data=bodies[index], timeout=600, headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary=bench{index}'})
        if response.status_code != 200:
            raise click.ClickException(f"STOW answered {response.status_code}: {response.text[:300]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, range(len(bodies))))
    return Push(time.perf_counter() - started, sum(p.stat().st_size for p in paths), len(paths))


# -- Orthanc ---------------------------------------------------------------------------------------
def start_orthanc(workdir: Path):
    """The peer: its DICOM port open, every file fsynced (SyncStorageArea) as fhirimg's are,
    and TCP_NODELAY=1 (see storescu_push)."""
    try:
        return PrivateOrthanc(workdir, dicom=True, sync=True, env={"TCP_NODELAY": "1"})
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None


def orthanc_post_instances(orthanc, paths: list[Path], clients: int) -> Push:
    """Orthanc's native ingest: one file per ``POST /instances``, ``clients`` at a time."""
    datas = [p.read_bytes() for p in paths]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(orthanc.upload, datas))
    return Push(time.perf_counter() - started, sum(len(d) for d in datas), len(datas))


def storescu_push(port: int, called: str, paths: list[Path]) -> Push:
    binary = shutil.which("storescu")
    if binary is None:
        raise click.ClickException("dcmtk's storescu is not installed (apt-get install dcmtk)")
    # dcmtk keeps Nagle's algorithm on unless TCP_NODELAY=1: each request would then wait for
    # the peer's delayed ACK (~40 ms). fhirimg acknowledges at once, Orthanc does not, so
    # without this the comparison would measure Orthanc's ACKs, not its ingest.
    env = {**os.environ, "TCP_NODELAY": "1"}
    started = time.perf_counter()
    result = subprocess.run([binary, "-aet", BENCH_AET, "-aec", called, "--max-pdu", "131072",
                             "127.0.0.1", str(port), *map(str, paths)], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise click.ClickException(f"storescu exited with {result.returncode}: {result.stderr[-600:]}")
    return Push(seconds, sum(p.stat().st_size for p in paths), len(paths))


# -- helpers and report -------------------------------------------------------------------------------
def wait_http(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"{process.args[:4]} exited with {process.returncode}")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise click.ClickException(f"{url} did not answer within {timeout} s")


def wait_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException(f"{process.args[:4]} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise click.ClickException(f"nothing listens on port {port} after {timeout} s")


def median(runs: list[Push]) -> Push:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def report(source: str, ours: list[Push], peer: list[Push], disk: list[Push], peer_label: str) -> str:
    best, other, ceiling = median(ours), median(peer), median(disk)
    label = "fhirimg STOW-RS" if source == "stow" else "fhirimg C-STORE (storescu)"
    lines = [f"push: {best.instances} instances, {best.nbytes / 1e6:.1f} MB; {len(ours)} repeat(s), median shown", "",
             f"{'':<40}{'seconds':>9}{'MB/s':>9}{'inst/s':>9}{'ratio':>8}"]
    for name, run in ((label, best), (peer_label, other), ("write+fsync same bytes (8 threads)", ceiling)):
        ratio = best.mb_per_s / run.mb_per_s if run.mb_per_s else 0.0
        lines.append(f"{name:<40}{run.seconds:>9.3f}{run.mb_per_s:>9.1f}{run.per_s:>9.1f}{ratio:>8.2f}")
    paired = sorted(o.mb_per_s / p.mb_per_s for o, p in zip(ours, peer) if p.mb_per_s)
    lines += ["", "ratio = fhirimg throughput / that line's throughput (fhirimg's own line is 1.00)",
              f"paired ratios fhirimg/peer, run by run (who goes first alternates): "
              f"{', '.join(f'{r:.2f}' for r in paired)}; median {paired[len(paired) // 2]:.2f}",
              f"fhirimg runs (s): {', '.join(f'{r.seconds:.3f}' for r in ours)}; "
              f"peer runs (s): {', '.join(f'{r.seconds:.3f}' for r in peer)}; "
              f"spread {statistics.pstdev([r.seconds for r in ours]):.3f} s"]
    return "\n".join(lines)


@click.command("push")
@click.option("--source", type=click.Choice(["stow", "cstore"]), default="stow", show_default=True,
              help="How the images reach fhirimg.")
@click.option("--instances", default=1000, show_default=True, help="Instances in the synthetic study.")
@click.option("--rows", default=512, show_default=True, help="Rows = columns (16-bit pixels).")
@click.option("--series", default=4, show_default=True, help="Series the instances are spread over.")
@click.option("--repeat", default=3, show_default=True, help="Runs of each measurement (median reported).")
@click.option("--batch", default=50, show_default=True, help="STOW-RS: instances per request.")
@click.option("--clients", default=4, show_default=True, help="STOW-RS and Orthanc POST: requests at a time.")
def command(source, instances, rows, series, repeat, batch, clients) -> None:
    """Push a synthetic study into fhirimg and into Orthanc, and time the disk, same run."""
    workdir = Path(tempfile.mkdtemp(prefix="fhirimg-bench-push-"))
    try:
        click.echo(f"writing {instances} synthetic instances of {rows}x{rows}x16-bit ...", err=True)
        study = workdir / "study"
        study.mkdir()
        paths = write_study(study, instances, rows, series)
        ours, peer, disk = [], [], []
        for run in range(repeat):
            run_dir = workdir / f"run{run}"
            (run_dir / "fhirimg").mkdir(parents=True)
            (run_dir / "orthanc").mkdir()
            server, orthanc = Fhirimg(run_dir / "fhirimg", listener=source == "cstore"), start_orthanc(run_dir / "orthanc")
            try:
                if source == "stow":
                    mine = lambda: stow_push(server.url, paths, batch, clients)  # noqa: E731
                    theirs = lambda: orthanc_post_instances(orthanc, paths, clients)  # noqa: E731
                else:
                    mine = lambda: storescu_push(server.dicom_port, "FHIRIMG", paths)  # noqa: E731
                    theirs = lambda: storescu_push(orthanc.dicom_port, "ORTHANC", paths)  # noqa: E731
                # Who goes first alternates: the second one meets the first one's dirty pages.
                if run % 2 == 0:
                    ours.append(mine())
                    peer.append(theirs())
                else:
                    peer.append(theirs())
                    ours.append(mine())
            finally:
                server.stop()
                orthanc.stop()
            ceiling = baseline_durable_writes(str(run_dir), ours[-1].nbytes, instances)
            disk.append(Push(ceiling.seconds, ceiling.nbytes, ceiling.instances))
            click.echo(f"run {run + 1}: fhirimg {ours[-1].seconds:.2f} s, Orthanc {peer[-1].seconds:.2f} s", err=True)
        peer_label = "Orthanc POST /instances" if source == "stow" else "Orthanc C-STORE (storescu)"
        click.echo(report(source, ours, peer, disk, peer_label))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
