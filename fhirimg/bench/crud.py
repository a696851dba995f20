"""`fhirimg bench crud`: create, read, update and search-by-id against a running server.

Each phase runs N concurrent clients (threads, one HTTP session each) over its share of
the resources and is timed on its own, so the figures per interaction are comparable
between deployments and backends.
"""
from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import click
import requests

from .stats import Latencies, format_table

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def make_study(tag: str, i: int) -> dict:
    uid = f"2.25.{uuid.uuid4().int}"
    return {"resourceType": "ImagingStudy", "status": "available",
            "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
            "subject": {"reference": f"Patient/bench-{tag}-{i % 100}"}, "started": "2026-01-02T03:04:05Z",
            "series": [{"uid": f"{uid}.1", "modality": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}]},
                        "instance": [{"uid": f"{uid}.1.{n}", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"}}
                                     for n in range(1, 6)]}]}


def run_phase(name: str, jobs: list, clients: int, action, token: str | None = None) -> tuple[Latencies, float]:
    stats = Latencies(name)
    sessions: dict = {}

    def one(job):
        import threading
        session = sessions.get(threading.get_ident())
        if session is None:
            session = sessions[threading.get_ident()] = requests.Session()
            if token:
                session.headers["Authorization"] = f"Bearer {token}"
        start = time.perf_counter()
        ok = action(session, job)
        elapsed = time.perf_counter() - start
        if ok:
            stats.seconds.append(elapsed)
        else:
            stats.errors += 1
        return ok

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, jobs))
    return stats, time.perf_counter() - start if results else 0.0


def bench_crud(base: str, count: int, clients: int, token: str | None = None) -> tuple[list[Latencies], dict[str, float]]:
    base = base.rstrip("/")
    tag = uuid.uuid4().hex[:8]
    studies = [make_study(tag, i) for i in range(count)]
    ids: list[str | None] = [None] * count

    def create(session, i):
        r = session.post(f"{base}/ImagingStudy", json=studies[i], headers=HEADERS, timeout=60)
        if r.status_code == 201:
            ids[i] = r.json()["id"]
        return r.status_code == 201

    def read(session, i):
        return session.get(f"{base}/ImagingStudy/{ids[i]}", headers=HEADERS, timeout=60).status_code == 200

    def update(session, i):
        body = dict(studies[i], id=ids[i], status="registered" if i % 2 else "unknown")
        return session.put(f"{base}/ImagingStudy/{ids[i]}", json=body, headers=HEADERS, timeout=60).status_code == 200

    def search(session, i):
        r = session.get(f"{base}/ImagingStudy", params={"_id": ids[i]}, headers=HEADERS, timeout=60)
        return r.status_code == 200 and len(r.json().get("entry", [])) == 1

    rows, wall = [], {}
    for name, action in (("create", create), ("read", read), ("update", update), ("search-by-id", search)):
        jobs = [i for i in range(count) if name == "create" or ids[i]]
        stats, seconds = run_phase(name, jobs, clients, action, token)
        rows.append(stats)
        wall[name] = seconds
    return rows, wall


def read_and_search(base: str, ids: list[str], clients: int, token: str | None, label: str):
    """The read and search-by-id phases over existing ids, labelled for a comparison table."""
    def read(session, rid):
        return session.get(f"{base}/ImagingStudy/{rid}", headers=HEADERS, timeout=60).status_code == 200

    def search(session, rid):
        r = session.get(f"{base}/ImagingStudy", params={"_id": rid}, headers=HEADERS, timeout=60)
        return r.status_code == 200 and len(r.json().get("entry", [])) == 1
    out = []
    for name, action in (("read", read), ("search-by-id", search)):
        out.append(run_phase(f"{name} {label}", ids, clients, action, token))
    return out


def compare_smart_and_anonymous(count: int, clients: int, rounds: int = 3) -> str:
    """The same gunicorn server twice on one database, smart and anonymous, read and search
    alternated `rounds` times: what access control adds per request, measured in one run."""
    from .servers import TwoServers
    with TwoServers() as servers:
        rows, wall = bench_crud(servers.anonymous, count, clients)
        ids = []
        import requests as _requests
        page = _requests.get(f"{servers.anonymous}/ImagingStudy", params={"_count": count, "_elements": "id"},
                             timeout=60).json()
        ids = [e["resource"]["id"] for e in page.get("entry", [])]
        merged: dict[str, Latencies] = {}
        walls: dict[str, float] = {}
        for _ in range(rounds):
            for base, token, label in ((servers.anonymous, None, "none"), (servers.smart, servers.token(), "smart")):
                for stats, seconds in read_and_search(base, ids, clients, token, label):
                    kept = merged.setdefault(stats.name, Latencies(stats.name))
                    kept.seconds += stats.seconds
                    kept.errors += stats.errors
                    walls[stats.name] = walls.get(stats.name, 0.0) + seconds
    lines = [format_table(list(merged.values()), walls), ""]
    for name in ("read", "search-by-id"):
        none, smart = merged[f"{name} none"], merged[f"{name} smart"]
        p50 = (smart.percentile(50) - none.percentile(50)) * 1000
        lines.append(f"{name}: smart/none p50 {smart.percentile(50) / none.percentile(50):.3f} "
                     f"(+{p50:.3f} ms), p99 {smart.percentile(99) / none.percentile(99):.3f}")
    return "\n".join(lines)


@click.command("crud")
@click.option("--base", default="http://127.0.0.1:8080/fhir", show_default=True, help="FHIR base URL.")
@click.option("--count", default=2000, show_default=True, help="Resources per interaction.")
@click.option("--clients", default=8, show_default=True, help="Concurrent clients.")
@click.option("--token", envvar="FHIRIMG_TOKEN", help="Bearer token for a server in smart mode.")
@click.option("--client", "client_id", help="Get the token as this registered client (with --key, --kid).")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False), help="The client's private key.")
@click.option("--kid", help="The client's key id.")
@click.option("--compare-auth", is_flag=True,
              help="Start two private servers (smart and anonymous) on one database and compare read and "
                   "search latency; --base is not used.")
def command(base: str, count: int, clients: int, token, client_id, key_file, kid, compare_auth) -> None:
    """Throughput and p50/p95/p99 latency of create, read, update and search-by-id."""
    if compare_auth:
        click.echo(f"fhirimg bench crud --compare-auth: {count} ImagingStudy, {clients} clients, gunicorn "
                   "2x4 on SQLite, smart vs anonymous, read and search alternated 3 times")
        click.echo(compare_smart_and_anonymous(count, clients))
        return
    if client_id:
        from ..auth.outbound import BackendServicesClient, load_private_key
        token = BackendServicesClient(client_id, load_private_key(key_file), kid, "system/*.cruds", base).token()
    click.echo(f"fhirimg bench crud: {count} ImagingStudy (1 series, 5 instances) x 4 interactions, "
               f"{clients} clients, against {base}")
    rows, wall = bench_crud(base, count, clients, token)
    click.echo(format_table(rows, wall))
