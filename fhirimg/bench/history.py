"""`fhirimg bench history` and `fhirimg bench replicate`.

history: latency of history pages by depth against a running server. Pages continue
from a cursor (keyset on the change sequence), so page 100 should cost what page 1
costs; the table prints the ratio to page 1 measured in the same run.

replicate: a fresh local database pulls a source's whole history (catch-up entries/s),
then follows it while writers put a steady load on the source (lag from a change's
lastUpdated at the source to its commit here: p50/p95/max).
"""
from __future__ import annotations

import statistics
import tempfile
import threading
import time
import uuid

import click
import requests

from . import BASE_HELP
from .servers import http_session
from .stats import Latencies

FHIR = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def patient(i: int, tag: str) -> dict:
    return {"resourceType": "Patient", "id": f"bh-{tag}-{i}", "gender": "female",
            "identifier": [{"system": "urn:fhirimg:bench", "value": f"{tag}-{i}"}],
            "name": [{"family": f"Bench{i}", "given": ["History"]}], "birthDate": "1980-01-01"}


def write_versions(base: str, count: int, batch: int = 100, session: requests.Session | None = None,
                   tag: str | None = None) -> float:
    """Write `count` versions as transaction Bundles of PUTs; returns versions/s."""
    session = session or http_session()
    tag = tag or uuid.uuid4().hex[:8]
    start = time.perf_counter()
    for first in range(0, count, batch):
        entries = [{"resource": patient(i, tag), "request": {"method": "PUT", "url": f"Patient/bh-{tag}-{i}"}}
                   for i in range(first, min(count, first + batch))]
        r = session.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                         headers=FHIR, timeout=300)
        if r.status_code != 200:
            raise click.ClickException(f"writing versions failed: {r.status_code} {r.text[:300]}")
    return count / (time.perf_counter() - start)


def change_count(base: str, session: requests.Session) -> int:
    r = session.get(f"{base}/_history", params={"_count": "0", "_total": "accurate"}, headers=FHIR, timeout=300)
    r.raise_for_status()
    return int(r.json().get("total", 0))


def page_latencies(base: str, path: str, params: dict, pages: int, session: requests.Session) -> list[float]:
    """Seconds per page while following `next` from the first page, up to `pages` pages."""
    url, out = f"{base}{path}", []
    query = dict(params)
    while url and len(out) < pages:
        start = time.perf_counter()
        r = session.get(url, params=query, headers=FHIR, timeout=300)
        out.append(time.perf_counter() - start)
        r.raise_for_status()
        url = next((link["url"] for link in r.json().get("link", []) if link["relation"] == "next"), None)
        query = {}
    return out


def bench_history(base: str, versions: int, count: int, walks: int) -> list[tuple[str, Latencies, Latencies, Latencies]]:
    session = http_session()
    have = change_count(base, session)
    if have < versions:
        rate = write_versions(base, versions - have, session=session)
        click.echo(f"wrote {versions - have} versions at {rate:.0f}/s")
    pages = max(1, min(100, versions // count))
    rows = []
    for name, path, params in (("system, newest first", "/_history", {"_count": count}),
                               ("system, oldest first", "/_history", {"_count": count, "_sort": "_lastUpdated"}),
                               ("Patient, newest first", "/Patient/_history", {"_count": count})):
        first, tenth, deep = Latencies("page 1"), Latencies("page 10"), Latencies(f"page {pages}")
        for _ in range(walks):
            seconds = page_latencies(base, path, params, pages, session)
            first.seconds.append(seconds[0])
            if len(seconds) >= 10:
                tenth.seconds.append(seconds[9])
            deep.seconds.append(seconds[-1])
        rows.append((name, first, tenth, deep))
    return rows


@click.command("history")
@click.option("--base", help=BASE_HELP)
@click.option("--versions", default=20_000, show_default=True, help="Make sure the server holds this many.")
@click.option("--count", default=100, show_default=True, help="_count per page.")
@click.option("--walks", default=5, show_default=True, help="Walks from page 1 to the deepest page.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def history_command(base: str | None, versions: int, count: int, walks: int, config_path: str | None) -> None:
    """Latency of history page 1 vs page 10 vs page 100 (cursor paging: deep costs like first)."""
    from ..cli import configured_base
    base = (base or configured_base(config_path)).rstrip("/")
    click.echo(f"fhirimg bench history: {versions} versions, _count={count}, {walks} walks, against {base}")
    rows = bench_history(base, versions, count, walks)
    click.echo(f"{'history':<24}{'page':>8}{'p50 ms':>10}{'max ms':>10}{'x page 1':>10}")
    for name, *buckets in rows:
        baseline = buckets[0].percentile(50)
        for bucket in buckets:
            if bucket.seconds:
                click.echo(f"{name:<24}{bucket.name.split()[1]:>8}{bucket.percentile(50) * 1000:>10.1f}"
                           f"{max(bucket.seconds) * 1000:>10.1f}{bucket.percentile(50) / baseline:>10.2f}")


# -- replication ---------------------------------------------------------------------------

def bench_replicate(source: str, changes: int, load_rate: float, load_seconds: float, database: str | None):
    from ..config import load_config
    from ..replicate.pull import pull_once
    from ..replicate.runner import Site
    from ..replicate.settings import Link
    session = http_session()
    have = change_count(source, session)
    if have < changes:
        rate = write_versions(source, changes - have, session=session)
        click.echo(f"source: wrote {changes - have} changes at {rate:.0f}/s")
    total = change_count(source, session)
    workdir = tempfile.mkdtemp(prefix="fhirimg-bench-replicate-")
    config = load_config(env={}, read_files=False,
                         overrides={"database_url": database or f"sqlite:///{workdir}/replica.db"})
    site = Site(config)
    client = site.client_for(Link("bench", "pull", source))
    link = Link(f"bench-{uuid.uuid4().hex[:8]}", "pull", source)
    marks: list[tuple[float, int]] = []
    start = time.perf_counter()
    report = pull_once(site.repo, client, link, site.site_id, page_size=site.section["page_size"],
                       after_page=lambda _n, changes: marks.append((time.perf_counter(), len(changes))))
    catch_up = time.perf_counter() - start
    lags = follow_under_load(site, client, link, source, load_rate, load_seconds)
    return total, report, catch_up, lags, tenths(start, marks)


def tenths(start: float, marks: list[tuple[float, int]]) -> list[float]:
    """Entries/s in each tenth of the catch-up (by pages): flat when depth costs nothing."""
    if len(marks) < 10:
        return []
    out, size, last = [], len(marks) / 10, start
    for k in range(10):
        chunk = marks[int(k * size):int((k + 1) * size)]
        out.append(sum(n for _, n in chunk) / (chunk[-1][0] - last))
        last = chunk[-1][0]
    return out


def follow_under_load(site, client, link, source: str, rate: float, seconds: float) -> list[float]:
    """Pull every 0.5 s while a writer makes `rate` changes/s; lag of each applied change."""
    from ..replicate.pull import pull_once
    stop, lags = threading.Event(), []

    def writer():
        session, tag, i = http_session(), uuid.uuid4().hex[:8], 0
        next_at = time.monotonic()
        while not stop.is_set():
            session.put(f"{source}/Patient/bl-{tag}-{i % 500}", json=dict(patient(i, tag), id=f"bl-{tag}-{i % 500}"),
                        headers=FHIR, timeout=60)
            i += 1
            next_at += 1 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))

    def record(_page, changes):
        now = time.time() * 1000
        lags.extend((now - c.updated_ms) / 1000 for c in changes if c.updated_ms)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pull_once(site.repo, client, link, site.site_id, page_size=site.section["page_size"], after_page=record)
        time.sleep(0.5)
    stop.set()
    thread.join(10)
    pull_once(site.repo, client, link, site.site_id, page_size=site.section["page_size"], after_page=record)
    return lags


@click.command("replicate")
@click.option("--source", help="FHIR base URL of the source (the benchmark WRITES to it: use a test server; "
              "default: base_url, else http://serve.host:serve.port/fhir from the configuration).")
@click.option("--changes", default=20_000, show_default=True, help="Make sure the source holds this many.")
@click.option("--load-rate", default=20.0, show_default=True, help="Changes/s written during the lag phase.")
@click.option("--load-seconds", default=20.0, show_default=True, help="Length of the lag phase.")
@click.option("--database", help="Replica database URL (default: a fresh SQLite file in a temp dir).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML configuration file.")
def replicate_command(source: str | None, changes: int, load_rate: float, load_seconds: float, database: str | None,
                      config_path: str | None) -> None:
    """Catch-up throughput (entries/s) and lag under a steady write load."""
    from ..cli import configured_base
    source = (source or configured_base(config_path)).rstrip("/")
    total, report, catch_up, lags, by_tenth = bench_replicate(source, changes, load_rate, load_seconds, database)
    click.echo(f"fhirimg bench replicate: source {source} with {total} changes")
    click.echo(f"catch-up   {report.applied} applied, {report.skipped} skipped in {report.pages} pages, "
               f"{catch_up:.1f}s: {report.applied / catch_up:.0f} entries/s")
    if by_tenth:
        click.echo("catch-up entries/s by tenth of the history (oldest first): "
                   + " ".join(f"{rate:.0f}" for rate in by_tenth)
                   + f"; last/first {by_tenth[-1] / by_tenth[0]:.2f}")
    if lags:
        ordered = sorted(lags)
        click.echo(f"lag under {load_rate:g} changes/s for {load_seconds:g}s: {len(lags)} changes, "
                   f"p50 {statistics.median(ordered):.2f}s p95 {ordered[int(0.95 * (len(ordered) - 1))]:.2f}s "
                   f"max {ordered[-1]:.2f}s (pull every 0.5s)")
