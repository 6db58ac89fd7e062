"""realtime.ids: an id's text. Ids MongoDB tells apart never share a text; ObjectIds, integers and ordinary
strings keep the text they always had."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from bson import Binary, Decimal128, Int64, ObjectId
from hypothesis import given
from hypothesis import strategies as st

from realtime import events as ev
from realtime.ids import MAX_LENGTH, checked, id_text, id_value, is_id_text

HEX = "65a1b2c3d4e5f60718293a4b"
OID = ObjectId(HEX)


@pytest.mark.parametrize(("value", "text"), [
    (OID, HEX),  # an ObjectId: its hex digits, as always
    (42, "42"), (-7, "-7"), (0, "0"), (Int64(42), "42"), (2**63 - 1, str(2**63 - 1)), (-(2**63), str(-(2**63))),
    (42.0, "42"), (-0.0, "0"), (Decimal128("42"), "42"), (Decimal128("4.2E+1"), "42"), (float(2**62), str(2**62)),
    ("alice", "alice"), ("p1", "p1"), ("u-1.x@y:z_", "u-1.x@y:z_"),  # ordinary strings: themselves
    ("007", "007"), ("-0", "-0"), ("+5", None), ("5.0", "5.0"), ("1e3", "1e3"),  # not an integer's text
    (HEX.upper(), HEX.upper()), (HEX[:23], HEX[:23]), (HEX + "0", HEX + "0"),  # not an ObjectId's text
    (HEX, "~" + HEX), ("42", "~42"), ("-7", "~-7"), ("0", "~0"),  # strings that read as another id: marked
    ("x" * 80, "x" * 80), ("1" * 79, "~" + "1" * 79),
])
def test_text_of_an_id(value: Any, text: str | None) -> None:
    assert id_text(value) == text
    if text is not None:
        assert is_id_text(text) and ev.valid_room(ev.post_room(text)) and ev.valid_room(ev.user_room(text))


@pytest.mark.parametrize("value", [
    True, False, None, 1.5, float("nan"), float("inf"), 2.0**63, Decimal128("4.5"), Decimal128("NaN"),
    Decimal128("Infinity"), uuid.UUID(int=5), Binary(b"\x01" * 16, 4), b"x", {"a": 1}, ["p1"], "", "has space",
    "a/b", "t~x", "~5", "~alice", "\u00e9t\u00e9", "x" * 81, "1" * 80, 2**63, -(2**63) - 1,
])
def test_what_has_no_text(value: Any) -> None:
    assert id_text(value) is None


@pytest.mark.parametrize("text", ["", "~", "~alice", "~007", "~" + HEX.upper(), "a b", "x" * 81, "~" + "1" * 80,
                                  str(2**63), "t~x", 5, None, b"p1"])
def test_what_is_not_the_text_of_an_id(text: Any) -> None:
    assert not is_id_text(text) and checked(text) is None
    if isinstance(text, str):
        with pytest.raises(ValueError):
            id_value(text)


def test_a_text_read_back_is_taken_as_it_is_never_written_again() -> None:
    """The text of an ObjectId is the text of no string: read back from Redis, it stays the ObjectId's."""
    assert checked(HEX) == HEX and checked("~" + HEX) == "~" + HEX and checked("42") == "42"
    assert id_value(HEX) == OID and isinstance(id_value(HEX), ObjectId)
    assert id_value("~" + HEX) == HEX and id_value("42") == 42 and id_value("~42") == "42"
    assert id_value("alice") == "alice" and id_value("007") == "007"


IDS = (st.builds(ObjectId, st.binary(min_size=12, max_size=12))
       | st.integers(-(2**63), 2**63 - 1)
       | st.integers(-(2**63), 2**63 - 1).map(Int64)
       | st.floats(-(2.0**64), 2.0**64)
       | st.integers(-(2**70), 2**70).map(lambda n: Decimal128(str(n)))
       | st.integers(-(2**70), 2**70).map(str)
       | st.binary(min_size=12, max_size=12).map(bytes.hex)
       | st.text(alphabet="abcAB019_.:@-~ ", max_size=82))


def kind(value: Any) -> tuple[str, Any]:
    """An id as MongoDB compares ids: numbers of one value are the same id, whatever their types."""
    if isinstance(value, ObjectId):
        return ("objectId", value)
    if isinstance(value, Decimal128):
        return ("number", value.to_decimal())
    if isinstance(value, (int, float)):
        return ("number", value)
    return ("string", value)


@given(IDS, IDS)
def test_two_ids_share_a_text_only_when_they_are_the_same_id(a: Any, b: Any) -> None:
    ta, tb = id_text(a), id_text(b)
    if ta is not None and ta == tb:
        assert kind(a) == kind(b)
    if ta is not None and kind(a) == kind(b):
        assert ta == tb


@given(IDS)
def test_a_text_names_its_id_and_fits_a_room(value: Any) -> None:
    text = id_text(value)
    if text is None:
        return
    assert len(text) <= MAX_LENGTH and is_id_text(text) and checked(text) == text
    assert kind(id_value(text)) == kind(value)
    for room in (ev.post_room(text), ev.author_room(text), ev.user_room(text)):
        assert ev.valid_room(room), room
