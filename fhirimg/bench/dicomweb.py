"""``fhirimg bench dicomweb``: small-request latency and burst throughput of a DICOMweb service,
side by side with a peer (by default a private Orthanc holding the same study).

What a viewer does most is small: a study search, an instance's metadata, one instance, one
frame, a rendered image. Each is timed `--repeat` times in sequence on one kept-alive
connection per target, the targets taking turns (p50, p95), then a burst of `--burst` study searches on `--threads` threads gives
requests per second. Without --base, the benchmark starts fhirimg (gunicorn, 2 workers,
SQLite, anonymous as the Orthanc it is compared with) and Orthanc (Debian's orthanc and
orthanc-dicomweb) and loads the same synthetic study into both (STOW-RS and Orthanc's REST).
"""
from __future__ import annotations

import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import click
import requests

from .servers import auth_headers

DICOM_STAR = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_STAR = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


@dataclass
class Target:
    """One DICOMweb root and the study, series and instance it is measured on."""
    label: str
    root: str
    study: str = ""
    series: str = ""
    sop: str = ""
    headers: dict = field(default_factory=dict)

    def requests(self) -> dict[str, tuple[str, str]]:
        instance = f"{self.root}/studies/{self.study}/series/{self.series}/instances/{self.sop}"
        return {"QIDO studies": (f"{self.root}/studies?StudyInstanceUID={self.study}", "application/dicom+json"),
                "metadata": (f"{instance}/metadata", "application/dicom+json"),
                "instance": (instance, DICOM_STAR),
                "frame": (f"{instance}/frames/1", FRAME_STAR),
                "rendered": (f"{instance}/rendered", "image/jpeg")}


@dataclass
class Figures:
    p50: dict[str, float] = field(default_factory=dict)
    p95: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    burst_per_s: float = 0.0
    burst_errors: int = 0


def session_for(target: Target) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.headers.update(target.headers)
    session.headers["Accept-Encoding"] = "identity"
    return session


def locate(target: Target) -> None:
    """The first instance of the study (or of the first study) the target holds."""
    session = session_for(target)
    if not target.study:
        found = session.get(f"{target.root}/studies?limit=1", timeout=30).json()
        if not found:
            raise click.ClickException(f"{target.label} holds no study")
        target.study = found[0]["0020000D"]["Value"][0]
    instances = session.get(f"{target.root}/studies/{target.study}/instances", timeout=30,
                            headers={"Accept": "application/dicom+json"}).json()
    if not instances:
        raise click.ClickException(f"{target.label} does not hold study {target.study}")
    first = sorted(instances, key=lambda i: i["00080018"]["Value"][0])[0]
    target.series, target.sop = first["0020000E"]["Value"][0], first["00080018"]["Value"][0]


def measure(targets: list[Target], repeat: int, burst: int, threads: int) -> list[Figures]:
    """Each kind of request `repeat` times per target, the targets taking turns in rounds of
    five (this VM's speed drifts by tens of percent over a minute: turns keep the
    comparison fair); then each target's burst."""
    figures = [Figures() for _ in targets]
    sessions = [session_for(t) for t in targets]
    for name in targets[0].requests():
        seconds = [[] for _ in targets]
        errors = [0 for _ in targets]
        for index in range(-1, (repeat + 4) // 5):  # the first round warms connections and caches
            for t, target in enumerate(targets):
                url, accept = target.requests()[name]
                for _ in range(5):
                    started = time.perf_counter()
                    response = sessions[t].get(url, headers={"Accept": accept}, timeout=60)
                    elapsed = time.perf_counter() - started
                    errors[t] += response.status_code != 200
                    if index >= 0:
                        seconds[t].append(elapsed)
        for t, figure in enumerate(figures):
            figure.p50[name] = statistics.median(seconds[t]) * 1000
            figure.p95[name] = sorted(seconds[t])[max(0, int(round(0.95 * (len(seconds[t]) - 1))))] * 1000
            figure.errors[name] = errors[t]
    for target, figure in zip(targets, figures):
        figure.burst_per_s, figure.burst_errors = run_burst(target, burst, threads)
    return figures


def run_burst(target: Target, count: int, threads: int) -> tuple[float, int]:
    url, accept = target.requests()["QIDO studies"]
    sessions = [session_for(target) for _ in range(threads)]

    def one(index: int) -> bool:
        try:
            return sessions[index % threads].get(url, headers={"Accept": accept}, timeout=60).status_code == 200
        except requests.RequestException:
            return False

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        answered = list(pool.map(one, range(count)))
    return count / (time.perf_counter() - started), answered.count(False)


def report(ours: Figures, peer: Figures | None, peer_label: str) -> str:
    head = f"{'request':<14}{'fhirimg p50':>12}{'p95':>8}"
    if peer:
        head += f"{peer_label + ' p50':>16}{'p95':>8}{'fhirimg/peer':>14}"
    lines = [head]
    for name in ours.p50:
        line = f"{name:<14}{ours.p50[name]:>10.2f}ms{ours.p95[name]:>6.1f}ms"
        if peer:
            line += f"{peer.p50[name]:>14.2f}ms{peer.p95[name]:>6.1f}ms{ours.p50[name] / peer.p50[name]:>14.2f}"
        lines.append(line + error_note(ours.errors[name], peer.errors[name] if peer else 0, peer_label))
    burst = f"{'burst req/s':<14}{ours.burst_per_s:>12.0f}{'':>8}"
    if peer:
        burst += f"{peer.burst_per_s:>16.0f}{'':>8}{ours.burst_per_s / peer.burst_per_s:>14.2f}"
    lines.append(burst + error_note(ours.burst_errors, peer.burst_errors if peer else 0, peer_label))
    lines.append("p50 ratio below 1 and burst ratio above 1: fhirimg ahead")
    return "\n".join(lines)


def error_note(ours: int, theirs: int, peer_label: str) -> str:
    """Failed requests (not 200), each side's own."""
    if not ours and not theirs:
        return ""
    return f"  (errors: fhirimg {ours}, {peer_label or 'peer'} {theirs})"


@click.command("dicomweb")
@click.option("--base", help="DICOMweb root of a running fhirimg (e.g. http://host:8080/dicom-web); "
              "without it the benchmark starts fhirimg and Orthanc itself.")
@click.option("--peer", help="DICOMweb root to compare with (with --base; the same --study must be held there).")
@click.option("--study", default="", help="StudyInstanceUID to measure on (default: the first study found).")
@click.option("--repeat", default=100, show_default=True, help="Sequential requests per kind and target.")
@click.option("--burst", default=400, show_default=True, help="Study searches in the burst.")
@click.option("--threads", default=100, show_default=True, help="Client threads of the burst.")
@click.option("--instances", default=20, show_default=True, help="Instances of the study loaded (no --base).")
@click.option("--rows", default=512, show_default=True, help="Rows = columns of each instance (no --base).")
@click.option("--audit/--no-audit", default=True, show_default=True,
              help="The started fhirimg records every access (its default); --no-audit shows what that costs.")
def command(base, peer, study, repeat, burst, threads, instances, rows, audit) -> None:
    """Small-request latency (p50/p95) and burst req/s, fhirimg beside a peer archive."""
    if base:
        ours = Target("fhirimg", base.rstrip("/"), study, headers=auth_headers())
        theirs = Target("peer", peer.rstrip("/"), study) if peer else None
        click.echo(run(ours, theirs, repeat, burst, threads))
        return
    with tempfile.TemporaryDirectory(prefix="fhirimg-bench-dicomweb-") as workdir:
        click.echo(run_private(Path(workdir), repeat, burst, threads, instances, rows, audit))


def run(ours: Target, theirs: Target | None, repeat: int, burst: int, threads: int) -> str:
    for target in filter(None, (ours, theirs)):
        locate(target)
    figures = measure([t for t in (ours, theirs) if t is not None], repeat, burst, threads)
    return report(figures[0], figures[1] if theirs else None, theirs.label if theirs else "")


def run_private(workdir: Path, repeat: int, burst: int, threads: int, instances: int, rows: int,
                audit: bool = True) -> str:
    from .push import Fhirimg, multipart_body, write_study
    from .retrieve_source import PrivateOrthanc
    paths = write_study(workdir, instances, rows, series=2)
    for name in ("fhirimg", "orthanc"):
        (workdir / name).mkdir()
    fhirimg = Fhirimg(workdir / "fhirimg", listener=False,
                      extra_env={} if audit else {"FHIRIMG_AUDIT__ENABLED": "false"})
    orthanc = None
    try:
        orthanc = PrivateOrthanc(workdir / "orthanc")
        body = multipart_body(paths, "benchload")
        stored = requests.post(f"{fhirimg.url}/dicom-web/studies", data=body, timeout=300, headers={
            "Content-Type": 'multipart/related; type="application/dicom"; boundary=benchload'})
        if stored.status_code != 200:
            raise click.ClickException(f"STOW-RS into fhirimg answered {stored.status_code}: {stored.text[:300]}")
        for path in paths:
            orthanc.upload(path.read_bytes())
        import pydicom
        study = str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        header = (f"{instances} instances of {rows}x{rows} (16-bit, uncompressed) in both; fhirimg on SQLite, "
                  f"anonymous, audit {'on' if audit else 'OFF'}; "
                  f"{repeat} sequential requests per kind, burst of {burst} on {threads} threads\n")
        return header + run(Target("fhirimg", f"{fhirimg.url}/dicom-web", study),
                             Target("Orthanc", orthanc.dicomweb, study), repeat, burst, threads)
    finally:
        if orthanc is not None:
            orthanc.stop()
        fhirimg.stop()
