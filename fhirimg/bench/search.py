"""`fhirimg bench search`: seed a realistic population, then time the HIE query mix (issue 4).

1. Seed N ImagingStudy over N/5 Patients and 20 Endpoints straight into storage
   (bench/search_seed.py), unless --no-seed reuses what the database holds.
2. Print the EXPLAIN plan of every query kind on the backend in use, and fail loudly if
   one of them scans a whole resource or index table.
3. Time each query kind over HTTP with concurrent clients: p50/p95/p99 and requests/s,
   against the issue's goals (p99 < 50 ms by patient and identifier, < 200 ms others).

Without --base a server (`fhirimg serve`, gunicorn) is started on a free port over the
same database for the duration of the run.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qsl, urlencode, urlsplit

import click
from sqlalchemy import func, select, text

from ..search.cursor import decode_cursor
from ..search.query import SearchRequest, page_query, resolve_date_spans
from ..search.tables import TABLES, search_token
from ..store import Repository, create_schema, make_engine
from ..store.schema import resource_current
from .search_seed import MRN_SYSTEM, seed_population
from .servers import TOKEN_ENV, http_session, use_token_source
from .stats import Latencies, format_table

GOALS_MS = {"by-patient": 50, "by-identifier": 50}
DEFAULT_GOAL_MS = 200
FULL_SCAN = {"sqlite": re.compile(r"^SCAN (resource_current|resource_version|search_\w+)(?: AS \w+)?$"),
             "postgresql": re.compile(r"Seq Scan on (resource_current|resource_version|search_\w+)")}


def sample(repo: Repository, limit: int = 2000) -> dict:
    """Values the query mix draws from, read back from the database."""
    tok = search_token
    with repo.reading() as uow:
        conn = uow.conn
        patients = conn.execute(select(tok.c.res_id, tok.c.code).where(
            tok.c.res_type == "Patient", tok.c.param == "identifier").limit(limit)).all()
        uids = [r.code for r in conn.execute(select(tok.c.code).where(
            tok.c.res_type == "ImagingStudy", tok.c.param == "identifier").limit(limit))]
        studies = conn.execute(select(func.count()).select_from(resource_current).where(
            resource_current.c.res_type == "ImagingStudy")).scalar_one()
        cur = resource_current
        sync = conn.execute(select(cur.c.last_updated_ms).where(cur.c.res_type == "ImagingStudy")
                            .order_by(cur.c.last_updated_ms.desc()).offset(max(studies // 100, 1)).limit(1)).scalar()
    if not patients or not uids:
        raise click.ClickException("the database holds no seeded population: run without --no-seed")
    return {"patients": [(r.res_id, r.code) for r in patients], "uids": uids, "studies": studies,
            "sync_ms": int(sync or 0)}


def instant(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def query_mix(values: dict, rng: random.Random) -> dict:
    """Query kind -> function returning (resource type, params) for one request."""
    def patient():
        return rng.choice(values["patients"])

    def modality_range():
        year = rng.randint(2017, 2025)
        return [("modality", rng.choice(["CT", "MR", "CR", "US"])), ("started", f"ge{year}-01-01"),
                ("started", f"lt{year}-04-01"), ("_sort", "-started")]

    return {
        "by-patient": lambda: [("patient", patient()[0])],
        "patient+include": lambda: [("patient", patient()[0]), ("_include", "ImagingStudy:endpoint")],
        "by-identifier": lambda: [("identifier", f"urn:dicom:uid|{rng.choice(values['uids'])}")],
        "modality+started+sort": modality_range,
        "lastUpdated-gt": lambda: [("_lastUpdated", f"gt{instant(values['sync_ms'] - 1)}")],
        "chained-patient-id": lambda: [("patient.identifier", f"{MRN_SYSTEM}|{patient()[1]}")],
    }


def explain(engine, res_type: str, params: list[tuple[str, str]]) -> tuple[str, bool]:
    """The plan of the page query the server runs for these parameters (a `_cursor` among
    them included: the keyset page it continues from), and whether it full-scans."""
    request = SearchRequest.parse(res_type, params)
    cursor = decode_cursor(request.cursor, request.canonical()) if request.cursor else None
    after = cursor["k"] if cursor else None
    backwards = bool(cursor and cursor.get("b"))
    with engine.connect() as conn:
        resolve_date_spans(conn, request)
        query, _ = page_query(request, after, backwards, 21)
        sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
        if engine.dialect.name == "postgresql":
            lines = [r[0] for r in conn.execute(text("EXPLAIN " + sql))]
        else:
            lines = [r[3] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql))]
    pattern = FULL_SCAN[engine.dialect.name]
    scans = any(pattern.search(line.strip()) for line in lines)
    return "\n".join(lines), scans


def start_server(database_url: str, workers: int) -> tuple[subprocess.Popen, str]:
    """`fhirimg serve` over the seeded database, in smart mode, with a token for the benchmark's
    own client (what http_session sends)."""
    import tempfile
    from pathlib import Path
    from .servers import BenchClient, start_serve
    workdir = Path(tempfile.mkdtemp(prefix="fhirimg-bench-search-"))
    env = {**{k: v for k, v in os.environ.items() if k != TOKEN_ENV}, "FHIRIMG_DATABASE_URL": database_url}
    try:
        proc, base = start_serve(env, workdir, workers)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    use_token_source(BenchClient(database_url, workdir, base).token)
    return proc, base


def timed_requests(name: str, urls: list[str], clients: int) -> tuple[Latencies, float]:
    stats = Latencies(name)
    sessions: dict = {}

    def one(url: str):
        import threading
        session = sessions.setdefault(threading.get_ident(), http_session())
        start = time.perf_counter()
        response = session.get(url, headers={"Accept": "application/fhir+json"}, timeout=120)
        elapsed = time.perf_counter() - start
        if response.status_code == 200:
            stats.seconds.append(elapsed)
        else:
            stats.errors += 1

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, urls))
    return stats, time.perf_counter() - start


def page_50_urls(base: str, values: dict, rng: random.Random, samples: int) -> list[str]:
    """URLs of page 50 (count 20) of modality searches, reached by following `next` links."""
    urls = []
    session = http_session()
    for _ in range(samples):
        url = f"{base}/ImagingStudy?" + urlencode([("modality", rng.choice(["CT", "MR", "CR"])), ("_count", "20")])
        for _page in range(49):
            bundle = session.get(url, timeout=120).json()
            nxt = [lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"]
            if not nxt:
                break
            url = nxt[0]
        urls.append(url)
    return urls


def fhirpath_cost() -> str:
    from ..search.extract import extract_index_rows
    from .search_seed import Population, make_study
    rng = random.Random(1)
    population = Population(patients=[("p", "m")], endpoints=["e"])
    study = make_study(rng, population, [1] * 8)
    study["series"] = [dict(study["series"][0], uid=f"1.2.{s}",
                            instance=[dict(study["series"][0]["instance"][0], uid=f"1.2.{s}.{i}") for i in range(10)])
                       for s in range(10)]
    out = []
    for label, fast in (("compiled subset", True), ("fhirpathpy", False)):
        extract_index_rows(study, fast)
        rounds = 300 if fast else 60
        start = time.perf_counter()
        for _ in range(rounds):
            extract_index_rows(study, fast)
        out.append(f"{label}: {(time.perf_counter() - start) / rounds * 1000:.2f} ms per study")
    return "index extraction, ImagingStudy with 10 series x 10 instances: " + "; ".join(out)


@click.command("search")
@click.option("--base", help="FHIR base URL of a server over --database-url (default: start one).")
@click.option("--database-url", help="Database to seed and explain (default: the configured one, with --yes).")
@click.option("--yes", is_flag=True,
              help="Seed the configured database (the server's own data) without --database-url.")
@click.option("--studies", default=1_000_000, show_default=True, help="ImagingStudy resources to seed.")
@click.option("--patients", type=int, help="Patients to seed (default: studies / 5).")
@click.option("--no-seed", is_flag=True, help="Reuse the population already in the database.")
@click.option("--requests", "per_kind", default=300, show_default=True, help="Timed requests per query kind.")
@click.option("--clients", default=2, show_default=True, help="Concurrent HTTP clients.")
@click.option("--workers", default=2, show_default=True, help="gunicorn workers of the started server.")
def command(base, database_url, studies, patients, no_seed, per_kind, clients, workers, yes) -> None:
    """Seed N studies, EXPLAIN and time the HIE search mix (p50/p99, req/s)."""
    database_url = database_url or configured_database(seeding=not no_seed, confirmed=yes)
    engine = make_engine(database_url)
    create_schema(engine)
    repo = Repository(engine)
    click.echo(fhirpath_cost())
    if not no_seed:
        patients = patients or max(studies // 5, 1)
        click.echo(f"seeding {studies} ImagingStudy over {patients} Patients and 20 Endpoints "
                   f"into {engine.url.render_as_string(hide_password=True)} ...")
        population = seed_population(repo, studies, patients, progress=_progress(studies))
        click.echo(f"\nseeded in {population.seconds:.1f} s: rows {population.load_seconds:.1f} s "
                   f"({studies / max(population.load_seconds, 1e-9):.0f} studies/s), index build "
                   f"{population.seconds - population.load_seconds:.1f} s")
    _analyze(engine)
    values = sample(repo)
    click.echo(f"database holds {values['studies']} ImagingStudy; index rows: {_index_counts(engine)}")
    rng = random.Random(7)
    mix = query_mix(values, rng)
    failed = [name for name, make in mix.items() if _print_plan(engine, name, make())]
    proc = None
    if not base:
        proc, base = start_server(database_url, workers)
    try:
        rows, wall, deep_scans = _time_mix(engine, base, mix, values, rng, per_kind, clients)
        if deep_scans:
            failed.append("deep-page-50")
    finally:
        if proc:
            proc.terminate()
            proc.wait(10)
    click.echo(format_table(rows, wall))
    click.echo(_goal_lines(rows))
    if failed:
        raise click.ClickException(f"full table scan in the plan of: {', '.join(failed)}")


def configured_database(seeding: bool, confirmed: bool) -> str:
    """The configured database_url, which is the dev server's own: a million seeded studies
    would land among its data, so seeding it needs --yes (a private one: --database-url)."""
    from ..cli import _load
    url = _load(None)["database_url"]
    if seeding and not confirmed:
        raise click.UsageError(f"bench search would seed studies into the configured database ({mask(url)}): "
                               "give --database-url for a database of its own, or --yes to seed this one")
    return url


def mask(url: str) -> str:
    from ..config import masked
    return masked({"url": url})["url"]


def _progress(total: int):
    def report(patients: int, studies: int) -> None:
        click.echo(f"\r  patients {patients}, studies {studies}/{total}", nl=False)
    return report


def _analyze(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("ANALYZE"))


def _index_counts(engine) -> dict:
    with engine.connect() as conn:
        return {kind: conn.execute(select(func.count()).select_from(table)).scalar_one()
                for kind, table in TABLES.items()}


def _print_plan(engine, name: str, params: list) -> bool:
    plan, scans = explain(engine, "ImagingStudy", params)
    flag = "  <-- FULL SCAN" if scans else ""
    click.echo(f"\nEXPLAIN {name}: ImagingStudy?{urlencode(params)}{flag}\n{plan}")
    return scans


def _time_mix(engine, base, mix, values, rng, per_kind, clients):
    rows, wall = [], {}
    for name, make in mix.items():
        urls = [f"{base}/ImagingStudy?{urlencode(make())}" for _ in range(per_kind)]
        timed_requests(name, urls[: max(clients, 5)], clients)  # warm-up
        stats, seconds = timed_requests(name, urls, clients)
        rows.append(stats)
        wall[name] = seconds
    deep = page_50_urls(base, values, rng, samples=5)
    deep_scans = _print_deep_plan(engine, deep[0])
    urls = [deep[i % len(deep)] for i in range(per_kind)]
    stats, seconds = timed_requests("deep-page-50", urls, clients)
    rows.append(stats)
    wall["deep-page-50"] = seconds
    return rows, wall, deep_scans


def _print_deep_plan(engine, url: str) -> bool:
    """EXPLAIN of page 50 as the server runs it: the first query continued from the cursor."""
    params = parse_qsl(urlsplit(url).query)
    return _print_plan(engine, "deep-page-50", params)


def _goal_lines(rows: list[Latencies]) -> str:
    lines = []
    for row in rows:
        goal = GOALS_MS.get(row.name, DEFAULT_GOAL_MS)
        p99 = row.percentile(99) * 1000
        lines.append(f"{row.name:<24} p99 {p99:8.1f} ms  goal < {goal} ms  {'ok' if p99 < goal else 'MISSED'}")
    return "\n".join(lines)
