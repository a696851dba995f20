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

from . import BASE_HELP
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


def write_population(count: int):
    """`count` studies written straight into a new database (before any server starts)."""
    def populate(database_url: str) -> list[str]:
        from ..store import Repository, create_schema, make_engine
        engine = make_engine(database_url)
        create_schema(engine)
        repo = Repository(engine)
        tag = uuid.uuid4().hex[:8]
        with repo.transaction() as uow:
            ids = [uow.create("ImagingStudy", make_study(tag, i)).res_id for i in range(count)]
        engine.dispose()
        return ids
    return populate


def paired_latencies(servers, items: list, clients: int, action, name: str,
                     labels: tuple[str, str] = ("none", "smart")) -> tuple[Latencies, Latencies, list]:
    """Each item asked of both servers back to back (which one first alternates), so that
    the machine's own drift - on a shared 2-core VM the same request's p50 moved by 2x
    between rounds - falls on both sides alike; returns both latencies (baseline, candidate:
    `labels`) and the paired differences (candidate - baseline). `action(session, base,
    item)` sends one request and says whether it succeeded."""
    import threading
    stats = {label: Latencies(f"{name} {label}") for label in labels}
    differences: list[float] = []
    sessions: dict = {}
    lock = threading.Lock()

    def one(index_and_item):
        index, item = index_and_item
        pair = sessions.get(threading.get_ident())
        if pair is None:
            pair = sessions[threading.get_ident()] = {label: requests.Session() for label in labels}
        timed = {}
        for label in (labels if index % 2 else labels[::-1]):
            session = pair[label]
            token = servers.token(label)
            if token:
                session.headers["Authorization"] = f"Bearer {token}"
            start = time.perf_counter()
            ok = action(session, servers.bases[label], item)
            timed[label] = time.perf_counter() - start if ok else None
        with lock:
            for label in labels:
                if timed[label] is None:
                    stats[label].errors += 1
                else:
                    stats[label].seconds.append(timed[label])
            if None not in timed.values():
                differences.append(timed[labels[1]] - timed[labels[0]])

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, enumerate(items)))
    return stats[labels[0]], stats[labels[1]], differences


def read_action(session, base, rid) -> bool:
    return session.get(f"{base}/ImagingStudy/{rid}", headers=HEADERS, timeout=60).status_code == 200


def search_action(session, base, rid) -> bool:
    return session.get(f"{base}/ImagingStudy?_id={rid}", headers=HEADERS, timeout=60).status_code == 200


def create_action(session, base, study) -> bool:
    return session.post(f"{base}/ImagingStudy", json=study, headers=HEADERS, timeout=60).status_code == 201


def compare_pair(servers, phases: dict, clients: int, rounds: int, labels: tuple[str, str]) -> str:
    """Warm up, then every phase paired on both servers; a table and one line per phase."""
    rows, lines = [], []
    for name, (action, items) in phases.items():  # warm-up: every page read once by both
        paired_latencies(servers, items[: len(items) // rounds or 1], clients, action, name, labels)
    for name, (action, items) in phases.items():
        base, candidate, differences = paired_latencies(servers, items, clients, action, name, labels)
        rows += [base, candidate]
        differences.sort()
        added = differences[len(differences) // 2] * 1000 if differences else float("nan")
        lines.append(f"{name}: {labels[1]}/{labels[0]} p50 {candidate.percentile(50) / base.percentile(50):.3f}, "
                     f"p99 {candidate.percentile(99) / base.percentile(99):.3f}; median paired difference "
                     f"{added:+.3f} ms")
    # req/s as each side alone would serve them: its own time only (the pairs interleave)
    busy = {row.name: sum(row.seconds) / clients for row in rows}
    return format_table(rows, busy) + "\n\n" + "\n".join(lines)


def compare_smart_and_anonymous(count: int, clients: int, rounds: int = 3) -> str:
    """The same gunicorn server twice on one database written before either started, smart
    and anonymous; every resource read and searched on both, back to back: what access
    control adds per request, measured in one run."""
    from .servers import TwoServers
    with TwoServers(write_population(count)) as servers:
        phases = {"read": (read_action, servers.population * rounds),
                  "search-by-id": (search_action, servers.population * rounds)}
        return compare_pair(servers, phases, clients, rounds, ("none", "smart"))


AUDIT_SIDES = {"audit off": {"FHIRIMG_AUDIT__ENABLED": "false"}, "audit on": {}}


def compare_audit_on_and_off(count: int, clients: int, database_url: str | None = None, rounds: int = 3) -> str:
    """Two smart servers on one database, auditing on and off: reads, searches and creates
    paired on both. Each read or search of the audited one waits for its event's group
    commit; each create appends its event inside the write transaction."""
    from .servers import TwoServers
    tag = uuid.uuid4().hex[:8]
    with TwoServers(write_population(count), AUDIT_SIDES, database_url) as servers:
        phases = {"read": (read_action, servers.population * rounds),
                  "search-by-id": (search_action, servers.population * rounds),
                  "create": (create_action, [make_study(tag, i) for i in range(count * rounds)])}
        return compare_pair(servers, phases, clients, rounds, ("audit off", "audit on"))


@click.command("crud")
@click.option("--base", help=BASE_HELP)
@click.option("--count", default=2000, show_default=True, help="Resources per interaction.")
@click.option("--clients", default=8, show_default=True, help="Concurrent clients.")
@click.option("--token", envvar="FHIRIMG_TOKEN", help="Bearer token for a server in smart mode.")
@click.option("--client", "client_id", help="Get the token as this registered client (with --key, --kid).")
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False), help="The client's private key.")
@click.option("--kid", help="The client's key id.")
@click.option("--compare-auth", is_flag=True,
              help="Start two private servers (smart and anonymous) on one database and compare read and "
                   "search latency, one client, each request paired on both; --base and --clients are not used.")
@click.option("--compare-audit", is_flag=True,
              help="Start two private smart servers on one database, auditing on and off, and compare read, "
                   "search and create latency, each request paired on both (use --clients 1 for the cost of "
                   "one request alone).")
@click.option("--database-url", help="With --compare-audit: a PostgreSQL URL (a private schema is made and "
                                     "dropped); default a new SQLite file.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def command(base: str | None, count: int, clients: int, token, client_id, key_file, kid, compare_auth, compare_audit,
            database_url, config_path) -> None:
    """Throughput and p50/p95/p99 latency of create, read, update and search-by-id."""
    if compare_audit:
        # --clients counts here: group commit shares a commit between concurrent requests.
        backend = "PostgreSQL" if (database_url or "").startswith("postgresql") else "SQLite"
        click.echo(f"fhirimg bench crud --compare-audit: {count} ImagingStudy x 3, {clients} client(s), gunicorn "
                   f"2x4 on {backend}, auditing off vs on, each request paired on both")
        click.echo(compare_audit_on_and_off(count, clients, database_url))
        return
    if compare_auth:
        # One client: the cost per request. With more clients than cores the second request of
        # a pair queues behind the others' and the difference measures the queue, not auth.
        click.echo(f"fhirimg bench crud --compare-auth: {count} ImagingStudy x 3, 1 client, gunicorn "
                   "2x4 on SQLite, smart vs anonymous, each request paired on both")
        click.echo(compare_smart_and_anonymous(count, 1))
        return
    from ..cli import configured_base
    base = base or configured_base(config_path)
    if client_id:
        from ..auth.outbound import BackendServicesClient, load_private_key
        token = BackendServicesClient(client_id, load_private_key(key_file), kid, "system/*.cruds", base).token()
    click.echo(f"fhirimg bench crud: {count} ImagingStudy (1 series, 5 instances) x 4 interactions, "
               f"{clients} clients, against {base}")
    rows, wall = bench_crud(base, count, clients, token)
    click.echo(format_table(rows, wall))
