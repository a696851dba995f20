"""Cursors and instants: the pure parts of history."""
from __future__ import annotations

import pytest

from fhirimg.errors import Invalid
from fhirimg.history import Cursor, parse_period, parse_since


def test_cursor_round_trips_and_is_url_safe():
    for cursor in (Cursor(), Cursor(5, 900, 17, True), Cursor(10**12, None, None, False)):
        token = cursor.encode()
        assert Cursor.decode(token) == cursor and all(c.isalnum() or c in "-_" for c in token)


@pytest.mark.parametrize("token", ["", "!!!", "bm90LWEtY3Vyc29y", Cursor(1, 2, 3).encode()[:-3],
                                   "WzIsMCxudWxsLG51bGwsMF0", "WzEsLTEsbnVsbCxudWxsLDBd"])
def test_foreign_or_damaged_cursors_are_400(token):
    with pytest.raises(Invalid) as info:
        Cursor.decode(token)
    assert info.value.status == 400 and info.value.issues[0].expression == ["_cursor"]


def test_since_rounds_up_to_the_millisecond_and_honours_offsets():
    assert parse_since("1970-01-01T00:00:01Z") == 1000
    assert parse_since("1970-01-01T00:00:01.0001Z") == 1001
    assert parse_since("1970-01-01T01:00:01+01:00") == 1000
    assert parse_since("1970-01-01T01:00:01 01:00") == 1000  # '+' decoded as a space
    assert parse_since("1970-01-02") == 86_400_000


@pytest.mark.parametrize("value", ["1970-01-01T00:00:01", "1970-01-01 00:00:01Z", "1970-02-30", "tomorrow",
                                   "1970-01-01T00:00:01+15:00", "ge1970-01-01"])
def test_malformed_since_is_400(value):
    with pytest.raises(Invalid):
        parse_since(value)


def test_periods_follow_the_precision_given():
    assert parse_period("1970", "_at") == (0, 365 * 86_400_000)
    assert parse_period("1970-12", "_at") == (334 * 86_400_000, 365 * 86_400_000)
    assert parse_period("1970-01-01T00:00:01Z", "_at") == (1000, 2000)
    assert parse_period("1970-01-01T00:00:01.5Z", "_at") == (1500, 1600)
