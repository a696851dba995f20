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


def run_phase(name: str, jobs: list, clients: int, action) -> tuple[Latencies, float]:
    stats = Latencies(name)
    sessions: dict = {}

    def one(job):
        import threading
        session = sessions.setdefault(threading.get_ident(), requests.Session())
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


def bench_crud(base: str, count: int, clients: int) -> tuple[list[Latencies], dict[str, float]]:
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
        stats, seconds = run_phase(name, jobs, clients, action)
        rows.append(stats)
        wall[name] = seconds
    return rows, wall


@click.command("crud")
@click.option("--base", default="http://127.0.0.1:8080/fhir", show_default=True, help="FHIR base URL.")
@click.option("--count", default=2000, show_default=True, help="Resources per interaction.")
@click.option("--clients", default=8, show_default=True, help="Concurrent clients.")
def command(base: str, count: int, clients: int) -> None:
    """Throughput and p50/p95/p99 latency of create, read, update and search-by-id."""
    click.echo(f"fhirimg bench crud: {count} ImagingStudy (1 series, 5 instances) x 4 interactions, "
               f"{clients} clients, against {base}")
    rows, wall = bench_crud(base, count, clients)
    click.echo(format_table(rows, wall))
