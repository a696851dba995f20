"""FHIR date/dateTime/instant values as millisecond ranges (search.html#date).

A value stands for the whole interval its precision implies: `2025` is the year,
`2025-03-01` the day, `2025-03-01T10:15` the minute. Values without a time zone are
read as UTC (this server's zone). Ranges are inclusive: [low, high] in ms since epoch.
"""
from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta

_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$")

MIN_MS = -62135596800000  # 0001-01-01T00:00:00Z
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


class BadDate(ValueError):
    pass


def date_range(text: str) -> tuple[int, int]:
    """The [low, high] ms range a FHIR date/dateTime/instant stands for."""
    match = _DATE.match(text.strip()) if isinstance(text, str) else None
    if not match:
        raise BadDate(f"{text!r} is not a FHIR date, dateTime or instant")
    g = match.groupdict()
    try:
        year, month, day = int(g["y"]), int(g["m"] or 1), int(g["d"] or 1)
        start = datetime(year, month, day, int(g["H"] or 0), int(g["M"] or 0), int(g["S"] or 0),
                         tzinfo=UTC)
    except ValueError as exc:
        raise BadDate(f"{text!r} is not a valid date: {exc}") from None
    if g["tz"] and g["tz"] != "Z":
        sign = 1 if g["tz"][0] == "+" else -1
        hours, minutes = int(g["tz"][1:3]), int(g["tz"][4:6])
        start -= sign * timedelta(hours=hours, minutes=minutes)
    low = _ms(start)
    if g["f"]:
        low += int(g["f"][:3].ljust(3, "0"))
        width = 1 if len(g["f"]) >= 3 else 10 ** (3 - len(g["f"]))
    elif g["S"]:
        width = 1000
    elif g["H"]:
        width = 60_000
    elif g["d"]:
        width = 86_400_000
    elif g["m"]:
        width = calendar.monthrange(year, month)[1] * 86_400_000
    else:
        width = (366 if calendar.isleap(year) else 365) * 86_400_000
    return low, low + width - 1


def _ms(dt: datetime) -> int:
    return int(dt.timestamp()) * 1000


def period_range(period: dict) -> tuple[int, int] | None:
    """A Period: open ends reach to the start/end of time (search.html#date)."""
    start, end = period.get("start"), period.get("end")
    if not start and not end:
        return None
    low = date_range(start)[0] if start else MIN_MS
    high = date_range(end)[1] if end else MAX_MS
    return low, high
