"""watchers.payload: document values made JSON-safe for a payload."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from watchers.payload import json_safe


def safe(value: object) -> object:
    return json_safe(value, max_string=100, max_depth=3)


@given(st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31, 23, 59, 59, 999999)))
def test_a_naive_date_is_written_in_utc_to_the_millisecond(value: dt.datetime) -> None:
    """PyMongo decodes BSON dates as naive UTC datetimes: ISO 8601 with milliseconds (cut, not rounded) and a Z."""
    assert safe(value) == value.isoformat(timespec="milliseconds") + "Z"


def test_dates_of_every_shape_are_written_alike() -> None:
    assert safe(dt.datetime(2026, 12, 7, 17, 36, 40)) == "2026-12-07T17:36:40.000Z"
    assert safe(dt.datetime(2026, 12, 7, 17, 36, 40, 999)) == "2026-12-07T17:36:40.000Z"
    assert safe(dt.datetime(2026, 12, 7, 17, 36, 40, 838999)) == "2026-12-07T17:36:40.838Z"
    assert safe(dt.datetime(999, 1, 2, 3, 4, 5, 6000)) == "0999-01-02T03:04:05.006Z"
    aware = dt.datetime(2026, 12, 7, 22, 36, 40, 838000, tzinfo=dt.timezone(dt.timedelta(hours=5)))
    assert safe(aware) == "2026-12-07T17:36:40.838Z"
    assert safe([dt.datetime(2026, 1, 1)]) == ["2026-01-01T00:00:00.000Z"]
