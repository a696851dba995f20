"""`fhirimg bench slowloris`: do normal requests keep their latency while hundreds of
clients send their requests a byte at a time? (issue 15, item 1)

Slow clients open connections and send a request head (or, with --slow body, a whole head
announcing a body) one byte every --interval seconds, reconnecting as soon as the server
drops them, so that --connections of them are open for the whole run. Meanwhile one
normal client sends a request every 50 ms on a new connection. Printed: the normal
requests' latency (p50/p99/max) and failures, and how long the server let each slow
connection live and how it ended (an answer such as 408 or 429, or a bare close).

On a loopback server the slow clients come from 127.0.0.2 upwards, --per-address each, so
that a per-address cap does not simply refuse them all: that is the attacker who has
many addresses. The normal client uses 127.0.0.1.
"""
from __future__ import annotations

import asyncio
import ipaddress
import resource
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import click

from .stats import Latencies

NORMAL_EVERY = 0.05
REQUEST_TIMEOUT = 10.0


@dataclass
class SlowStats:
    opened: int = 0
    lifetimes: list[float] = field(default_factory=list)
    endings: dict[str, int] = field(default_factory=dict)
    open_now: int = 0
    least_open: int | None = None  # fewest open at once, once all had connected
    open_samples: list[int] = field(default_factory=list)

    def mean_open(self) -> float:
        return sum(self.open_samples) / len(self.open_samples) if self.open_samples else 0.0

    def ended(self, seconds: float, how: str) -> None:
        self.lifetimes.append(seconds)
        self.endings[how] = self.endings.get(how, 0) + 1


@dataclass
class Outcome:
    normal: Latencies
    slow: SlowStats
    seconds: float

    def describe(self) -> str:
        n, s = self.normal, self.slow
        life = sorted(s.lifetimes)
        lines = [f"normal requests   {len(n.seconds)} answered, {n.errors} failed; "
                 f"p50 {n.percentile(50) * 1000:.1f} ms, p99 {n.percentile(99) * 1000:.1f} ms, "
                 f"max {max(n.seconds, default=float('nan')) * 1000:.1f} ms",
                 f"slow connections  {s.opened} opened over {self.seconds:.0f} s, {s.mean_open():.0f} open on average "
                 f"(at least {s.least_open}); {len(life)} ended by the server"]
        if life:
            lines.append(f"  lifetime         p50 {life[len(life) // 2]:.1f} s, max {life[-1]:.1f} s; "
                         + ", ".join(f"{how}: {count}" for how, count in sorted(s.endings.items())))
        return "\n".join(lines)


def slow_sources(host: str, connections: int, per_address: int) -> list[str | None]:
    """Source address of each slow connection: loopback aliases from 127.0.0.2 for a
    loopback server, else the default route's."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback and ":" not in host
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        return [None] * connections
    return [f"127.0.{2 + i // per_address // 250}.{2 + (i // per_address) % 250}" for i in range(connections)]


def slow_request(mode: str, host: str, path: str) -> tuple[bytes, bytes]:
    """What a slow client sends at once, and what it then drips a byte at a time."""
    head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode()
    if mode == "body":
        return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/fhir+json\r\n"
                f"Content-Length: 100000\r\n\r\n".encode(), b"{" * 100000)
    return head, b"X-Slow: " + b"a" * 60000


async def slow_client(host: str, port: int, source: str | None, mode: str, path: str, interval: float,
                      until: float, stats: SlowStats) -> None:
    first, drip = slow_request(mode, host, path)
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(
                host, port, local_addr=(source, 0) if source else None)
        except OSError:
            await asyncio.sleep(interval)
            continue
        stats.opened += 1
        stats.open_now += 1
        opened = time.monotonic()
        how = await hold(reader, writer, first, drip, interval, until)
        stats.open_now -= 1
        if how is not None:
            stats.ended(time.monotonic() - opened, how)
        writer.close()


async def hold(reader, writer, first: bytes, drip: bytes, interval: float, until: float) -> str | None:
    """Send `first`, then `drip` a byte per interval, until the server ends the connection
    (returns how) or the run is over (None)."""
    answer = asyncio.ensure_future(reader.read(256))
    try:
        writer.write(first)
        for byte in drip:
            if time.monotonic() >= until:
                return None
            done, _ = await asyncio.wait({answer}, timeout=interval)
            if done:
                data = answer.result()
                return data.split(b"\r\n", 1)[0].split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
            writer.write(bytes([byte]))
        return None
    except (ConnectionError, OSError):
        return "reset"
    finally:
        answer.cancel()


async def normal_client(host: str, port: int, path: str, headers: dict, until: float, latencies: Latencies) -> None:
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
               + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode()
    while time.monotonic() < until:
        started = time.monotonic()
        try:
            answer = await asyncio.wait_for(one_request(host, port, request), REQUEST_TIMEOUT)
            if answer.startswith(b"HTTP/1.1 200"):
                latencies.seconds.append(time.monotonic() - started)
            else:
                latencies.errors += 1
        except (OSError, asyncio.TimeoutError):
            latencies.errors += 1
        await asyncio.sleep(max(0.0, NORMAL_EVERY - (time.monotonic() - started)))


async def one_request(host: str, port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(host, port, local_addr=("127.0.0.1", 0)
                                                   if host.startswith("127.") else None)
    try:
        writer.write(request)
        return await reader.read()
    finally:
        writer.close()


async def watch_open(stats: SlowStats, connections: int, until: float) -> None:
    """The fewest slow connections open at once, counted once all had first connected."""
    while time.monotonic() < until and stats.opened < connections:
        await asyncio.sleep(0.1)
    while time.monotonic() < until - 0.5:
        stats.least_open = stats.open_now if stats.least_open is None else min(stats.least_open, stats.open_now)
        stats.open_samples.append(stats.open_now)
        await asyncio.sleep(0.1)


async def attack(base: str, connections: int, seconds: float, mode: str, interval: float,
                 per_address: int, headers: dict) -> Outcome:
    parts = urlsplit(base)
    host, port = parts.hostname, parts.port or 80
    path = parts.path.rstrip("/") + "/metadata"
    until = time.monotonic() + seconds
    slow = SlowStats()
    normal = Latencies("normal")
    tasks = [slow_client(host, port, source, mode, path, interval, until, slow)
             for source in slow_sources(host, connections, per_address)]
    started = time.monotonic()
    await asyncio.gather(*tasks, normal_client(host, port, path, headers, until, normal),
                         watch_open(slow, connections, until))
    return Outcome(normal, slow, time.monotonic() - started)


def run_slowloris(base: str, connections: int = 500, seconds: float = 60.0, mode: str = "head",
                  interval: float = 1.0, per_address: int = 25, headers: dict | None = None) -> Outcome:
    raise_open_files(connections + 64)
    return asyncio.run(attack(base, connections, seconds, mode, interval, per_address, headers or {}))


def raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(needed, soft)), hard))


@click.command("slowloris")
@click.option("--base", help="FHIR base of a running server; default: start `fhirimg serve` (2 workers) "
                             "on a new SQLite database.")
@click.option("--connections", default=500, show_default=True, help="Slow connections held open.")
@click.option("--seconds", default=60.0, show_default=True, help="Length of the run.")
@click.option("--slow", "mode", type=click.Choice(["head", "body"]), default="head", show_default=True,
              help="Drip the request head, or send a whole head and drip the body it announces.")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between two bytes of a slow client.")
@click.option("--per-address", default=25, show_default=True,
              help="Slow connections per source address (loopback servers only).")
def command(base, connections, seconds, mode, interval, per_address) -> None:
    """Normal-request latency while slow clients hold connections open."""
    from .servers import auth_headers
    if base:
        outcome = run_slowloris(base, connections, seconds, mode, interval, per_address, auth_headers())
    else:
        outcome = with_started_server(lambda b: run_slowloris(b, connections, seconds, mode, interval,
                                                             per_address, auth_headers()))
    click.echo(outcome.describe())


def with_started_server(run):
    import os
    import shutil
    import tempfile
    from pathlib import Path
    from .servers import start_serve, stop
    workdir = Path(tempfile.mkdtemp(prefix="fhirimg-bench-slowloris-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIRIMG_")}
    env.update({"FHIRIMG_DATABASE_URL": f"sqlite:///{workdir / 'bench.db'}", "FHIRIMG_VAR_DIR": str(workdir),
                "FHIRIMG_LOG_LEVEL": "WARNING"})
    process, base = start_serve(env, workdir)
    try:
        return run(base)
    finally:
        stop(process)
        shutil.rmtree(workdir, ignore_errors=True)
