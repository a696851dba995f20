"""Latency bookkeeping shared by the benchmarks."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Latencies:
    name: str
    seconds: list[float] = field(default_factory=list)
    errors: int = 0

    def percentile(self, p: float) -> float:
        if not self.seconds:
            return float("nan")
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def format_table(rows: list[Latencies], wall: dict[str, float]) -> str:
    lines = [f"{'interaction':<16}{'count':>8}{'errors':>8}{'req/s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}"]
    for row in rows:
        rate = len(row.seconds) / wall[row.name] if wall.get(row.name) else 0.0
        lines.append(f"{row.name:<16}{len(row.seconds):>8}{row.errors:>8}{rate:>10.1f}"
                     f"{row.percentile(50) * 1000:>10.2f}{row.percentile(95) * 1000:>10.2f}"
                     f"{row.percentile(99) * 1000:>10.2f}")
    return "\n".join(lines)
