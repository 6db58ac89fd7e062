"""Resume tokens: string order is (clusterTime, type, txnOpIndex, fromInvalidate) order."""

from __future__ import annotations

import pytest
from bson import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from realtime.standin import tokens

positions = st.tuples(
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.sampled_from([tokens.HIGH_WATER_MARK, tokens.EVENT]),
    st.integers(0, 1000), st.booleans(), st.text(max_size=5),
)


@given(positions, positions)
def test_string_order_is_position_order(a: tuple, b: tuple) -> None:  # type: ignore[type-arg]
    ta = tokens.make_token(Timestamp(a[0], a[1]), a[2], a[3], a[5], a[4])["_data"]
    tb = tokens.make_token(Timestamp(b[0], b[1]), b[2], b[3], b[5], b[4])["_data"]
    if a[:5] != b[:5]:
        assert (ta < tb) == (a[:5] < b[:5])


@given(positions)
def test_decode_round_trips(a: tuple) -> None:  # type: ignore[type-arg]
    token = tokens.make_token(Timestamp(a[0], a[1]), a[2], a[3], a[5], a[4])
    key = tokens.decode(token)
    assert (key.time, key.inc, key.kind, key.txn_op_index, key.from_invalidate) == a[:5]
    assert token["_data"][:18] == f"82{a[0]:08X}{a[1]:08X}"


def test_high_water_mark_sorts_before_events_at_the_same_time() -> None:
    ts = Timestamp(100, 5)
    assert tokens.high_water_mark(ts)["_data"] < tokens.make_token(ts, tokens.EVENT, 0, "x")["_data"]
    assert tokens.make_token(Timestamp(100, 4), tokens.EVENT, 9, "x")["_data"] < tokens.high_water_mark(ts)["_data"]


@pytest.mark.parametrize("bad", [None, "82", {"_data": 5}, {"_data": "XYZ"}, {"_data": "82" + "0" * 16 + "2B0204"}])
def test_foreign_tokens_are_refused(bad: object) -> None:
    with pytest.raises(tokens.BadToken):
        tokens.decode(bad)
