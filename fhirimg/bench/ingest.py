"""`fhirimg bench ingest`: EHR-style transaction Bundles against a running server.

Each study is one transaction Bundle - a Patient, an Endpoint and an ImagingStudy with S
series of I instances, linked by urn:uuid fullUrls and written conditionally on their
business identifiers, as an EHR pushes them. C clients post them concurrently. In the same
run the same resources are written straight through the storage layer (no HTTP, no
validation, same concurrency) into the server's database; the ratio of the two rates is
what validation, reference resolution and HTTP cost.
"""
from __future__ import annotations

import http.client
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import click
import orjson

from . import BASE_HELP
from .servers import auth_headers
from .stats import Latencies

HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
           "Prefer": "return=minimal"}
DCM = "http://dicom.nema.org/resources/ontology/DCM"
CT_IMAGE_STORAGE = "urn:oid:1.2.840.10008.5.1.4.1.1.2"
MRN = "http://bench.fhirimg.example.org/mrn"
ENDPOINTS = "http://bench.fhirimg.example.org/endpoints"


@dataclass
class Study:
    """One study's resources, references still pointing at urn:uuid fullUrls."""

    patient: dict
    endpoint: dict
    study: dict
    urls: tuple[str, str, str]


def make_study(tag: str, n: int, series: int, instances: int, shared_endpoint: bool) -> Study:
    uid = f"2.25.{uuid.uuid4().int}"
    urls = tuple(f"urn:uuid:{uuid.uuid4()}" for _ in range(3))
    endpoint_key = f"{tag}-pacs" if shared_endpoint else f"{tag}-pacs-{n}"
    patient = {"resourceType": "Patient", "identifier": [{"system": MRN, "value": f"{tag}-{n}"}],
               "name": [{"family": f"Bench{n}", "given": ["Test"]}], "gender": "other", "birthDate": "1970-01-01"}
    endpoint = {"resourceType": "Endpoint", "identifier": [{"system": ENDPOINTS, "value": endpoint_key}],
                "status": "active",
                "connectionType": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                                                "code": "dicom-wado-rs"}]}],
                "payload": [{"mimeType": ["application/dicom"]}], "address": "https://pacs.bench.example.org/dicom-web"}
    study = {"resourceType": "ImagingStudy", "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{uid}"}],
             "status": "available", "subject": {"reference": urls[0]}, "started": "2026-03-01T10:15:00Z",
             "endpoint": [{"reference": urls[1]}], "numberOfSeries": series, "numberOfInstances": series * instances,
             "series": [{"uid": f"{uid}.{s + 1}", "number": s + 1,
                         "modality": {"coding": [{"system": DCM, "code": "CT"}]},
                         "numberOfInstances": instances,
                         "instance": [{"uid": f"{uid}.{s + 1}.{i + 1}", "number": i + 1,
                                       "sopClass": {"system": "urn:ietf:rfc:3986", "code": CT_IMAGE_STORAGE}}
                                      for i in range(instances)]} for s in range(series)]}
    return Study(patient, endpoint, study, urls)


def transaction_bundle(item: Study) -> bytes:
    p_url, e_url, s_url = item.urls
    entries = [
        {"fullUrl": p_url, "resource": item.patient,
         "request": {"method": "PUT", "url": f"Patient?identifier={MRN}|{item.patient['identifier'][0]['value']}"}},
        {"fullUrl": e_url, "resource": item.endpoint,
         "request": {"method": "PUT", "url": f"Endpoint?identifier={ENDPOINTS}|{item.endpoint['identifier'][0]['value']}"}},
        {"fullUrl": s_url, "resource": item.study,
         "request": {"method": "PUT", "url": f"ImagingStudy?identifier=urn:dicom:uid|{item.study['identifier'][0]['value']}"}},
    ]
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


@dataclass
class Run:
    name: str
    studies: int
    seconds: float
    latencies: Latencies
    bytes_sent: int = 0

    @property
    def rate(self) -> float:
        return self.studies / self.seconds if self.seconds else 0.0

    def describe(self) -> str:
        lat = self.latencies
        text = (f"{self.name:<10} {self.studies:>6} studies in {self.seconds:6.2f} s: {self.rate:8.1f} studies/s "
                f"{3 * self.rate:8.1f} resources/s")
        if self.bytes_sent:
            text += f" {self.bytes_sent / self.seconds / 1e6:6.2f} MB/s"
        return (text + f"  latency p50 {lat.percentile(50) * 1000:.1f} ms p95 {lat.percentile(95) * 1000:.1f} ms "
                f"p99 {lat.percentile(99) * 1000:.1f} ms  errors {lat.errors}")


def run_concurrently(name: str, jobs: list, concurrency: int, action) -> Run:
    """Run `action(job)` for every job on `concurrency` threads; time each and the whole."""
    latencies = Latencies(name)
    lock = threading.Lock()

    def one(job) -> None:
        start = time.perf_counter()
        ok = action(job)
        elapsed = time.perf_counter() - start
        with lock:
            if ok:
                latencies.seconds.append(elapsed)
            else:
                latencies.errors += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, jobs))
    return Run(name, len(jobs), time.perf_counter() - start, latencies)


def ingest_over_http(base: str, bodies: list[bytes], concurrency: int) -> Run:
    local = threading.local()
    first_error: list[str] = []

    def post(body: bytes) -> bool:
        client = getattr(local, "client", None) or setattr(local, "client", KeepAliveClient(base)) or local.client
        status, text = client.post(body)
        if status != 200 and not first_error:
            first_error.append(f"HTTP {status}: {text[:300]}")
        return status == 200

    run = run_concurrently("ingest", bodies, concurrency, post)
    run.bytes_sent = sum(len(b) for b in bodies)
    if first_error:
        click.echo(f"first error: {first_error[0]}", err=True)
    return run


class KeepAliveClient:
    """One persistent HTTP/1.1 connection on http.client.

    The clients share the server's cores: through requests each POST cost ~2.5 ms of client
    CPU, a sixth of everything a push cost the machine; http.client does the same
    exchange for a fraction of that, so the figures measure the server rather than the client.
    """

    def __init__(self, base: str, timeout: float = 300):
        parts = urlsplit(base)
        connection_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        self.connect = lambda: connection_class(parts.netloc, timeout=timeout)
        self.path = parts.path or "/"
        self.headers = {**HEADERS, **auth_headers()}
        self.connection = self.connect()

    def post(self, body: bytes) -> tuple[int, str]:
        try:
            return self.exchange(body)
        except (http.client.HTTPException, ConnectionError):
            # The server closed an idle keep-alive connection: once more on a new one (the
            # Bundles are conditional: sending one twice writes nothing new).
            self.reconnect()
            return self.exchange(body)

    def exchange(self, body: bytes) -> tuple[int, str]:
        self.connection.request("POST", self.path, body=body, headers=self.headers)
        response = self.connection.getresponse()
        payload = response.read()
        if response.will_close:
            self.reconnect()
        return response.status, payload.decode("utf-8", "replace")

    def reconnect(self) -> None:
        self.connection.close()
        self.connection = self.connect()


def store_directly(database_url: str, studies: list[Study], concurrency: int) -> Run:
    """The same resources through Repository alone: ids chosen here, references pre-resolved."""
    from ..store import Repository, create_schema, make_engine
    engine = make_engine(database_url)
    create_schema(engine)
    repo = Repository(engine)
    endpoint_ids: dict[str, str] = {}
    try:
        return run_concurrently("raw store", studies, concurrency, lambda item: store_study(repo, item, endpoint_ids))
    finally:
        engine.dispose()


def store_study(repo, item: Study, endpoint_ids: dict[str, str]) -> bool:
    """One study in one storage transaction; a shared Endpoint is written once."""
    key = item.endpoint["identifier"][0]["value"]
    with repo.transaction() as uow:
        patient = uow.create("Patient", item.patient)
        if key not in endpoint_ids:
            endpoint_ids[key] = uow.create("Endpoint", item.endpoint).res_id
        study = dict(item.study, subject={"reference": f"Patient/{patient.res_id}"},
                     endpoint=[{"reference": f"Endpoint/{endpoint_ids[key]}"}])
        uow.create("ImagingStudy", study)
    return True


@click.command("ingest")
@click.option("--base", help=BASE_HELP)
@click.option("--studies", default=1000, show_default=True, help="Studies (one transaction Bundle each).")
@click.option("--series", default=1, show_default=True, help="Series per study.")
@click.option("--instances", default=10, show_default=True, help="Instances per series.")
@click.option("--concurrency", default=8, show_default=True, help="Concurrent clients.")
@click.option("--shared-endpoint/--endpoint-per-study", default=True, show_default=True,
              help="All studies name the same archive Endpoint (as one EHR does), or each its own.")
@click.option("--database-url", help="The server's database, for the raw-store baseline "
              "(default: database_url from the configuration). 'none' skips the baseline.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def command(base, studies, series, instances, concurrency, shared_endpoint, database_url, config_path) -> None:
    """Studies/s, resources/s, bytes/s and p50/p95/p99 latency of transaction-Bundle ingest,
    and its ratio to writing the same resources with the storage layer alone."""
    from ..config import load_config
    database_url = database_url or load_config(config_path)["database_url"]
    from ..cli import configured_base
    base = base or configured_base(config_path)
    tag = uuid.uuid4().hex[:10]
    items = [make_study(tag, n, series, instances, shared_endpoint) for n in range(studies)]
    bodies = [transaction_bundle(item) for item in items]
    click.echo(f"fhirimg bench ingest: {studies} studies x ({series} series x {instances} instances), "
               f"{'shared' if shared_endpoint else 'per-study'} Endpoint, {concurrency} clients, "
               f"{sum(map(len, bodies)) / studies / 1024:.1f} KiB per Bundle, against {base}")
    ingest = ingest_over_http(base.rstrip("/"), bodies, concurrency)
    click.echo(ingest.describe())
    if database_url == "none":
        return
    raw_items = [make_study(tag + "r", n, series, instances, shared_endpoint) for n in range(studies)]
    raw = store_directly(database_url, raw_items, concurrency)
    click.echo(raw.describe())
    click.echo(f"ratio ingest/raw-store: {ingest.rate / raw.rate:.2f} "
               "(the share of the storage layer's rate left after HTTP, validation and reference resolution)")
