"""Document ids as text: a document's ``_id``, and a reference to one (``authorId``, ``postId``, ``userId``), as
events, room names (``post:{id}``, ``author:{id}``, ``user:{id}``) and the watcher's Redis keys write it. Pure.

Two ids MongoDB tells apart never share a text, and one id always has the same text (docs/events.md, "Ids"):

* an ObjectId: its 24 lowercase hex digits (``65a1b2c3d4e5f60718293a4b``);
* a number with a whole value, of any numeric type (MongoDB takes ``5``, ``NumberLong(5)``, ``5.0`` and
  ``NumberDecimal("5")`` for the same id): its decimal digits (``42``, ``-7``), within the range of an int64;
* a string: itself (``alice``, ``p1``), unless it reads as one of those (24 lowercase hex digits, or an
  integer's decimal digits: no leading zero, no sign but a minus): then itself after a ``~``
  (``~65a1b2c3d4e5f60718293a4b``, ``~42``). No other text holds a ``~``.

Anything else has no text: a number that is not whole (``1.5``, NaN), a bool, null, a UUID or other binary,
a subdocument, an array; a string with characters other than ASCII letters, digits and ``_ . : @ -``; a text
longer than 80 characters. What needs the id of such a document is skipped (``bad_id``, ``no_post_id``,
``no_author``).

:func:`id_text` writes a value; :func:`is_id_text` checks a text already written (read back from Redis, or
a token's subject), and never writes it again: writing the text of a string id would mark it.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final, cast

MAX_LENGTH: Final = 80
MARK: Final = "~"  # before a string that reads as an ObjectId's or an integer's text
INT64: Final = 1 << 63

_PLAIN = r"[A-Za-z0-9_.:@-]{1,80}"
_OBJECT_ID = r"[0-9a-f]{24}"
_INTEGER = r"0|-?[1-9][0-9]*"
# What an id's text is: a plain text, or a marked string (at most 80 characters with its mark).
PATTERN: Final = rf"{_PLAIN}|~(?:{_OBJECT_ID}|0|[1-9][0-9]{{0,78}}|-[1-9][0-9]{{0,77}})"

_PLAIN_RE = re.compile(_PLAIN)
_OBJECT_ID_RE = re.compile(_OBJECT_ID)
_INTEGER_RE = re.compile(_INTEGER)
_TEXT_RE = re.compile(PATTERN)
_AMBIGUOUS_RE = re.compile(rf"{_OBJECT_ID}|{_INTEGER}")


def _ambiguous(text: str) -> bool:
    """Whether a string reads as an ObjectId's or an integer's text."""
    return _AMBIGUOUS_RE.fullmatch(text) is not None


def _whole(value: object) -> int | None:
    """The value of a number that is whole and within an int64's range (None otherwise, and for a bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # bson.Int64 too
        number = int(value)
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            return None
        number = int(value)
    elif type(value).__name__ == "Decimal128":
        exact = cast(Any, value).to_decimal()
        if not exact.is_finite() or exact != exact.to_integral_value():
            return None
        number = int(exact)
    else:
        return None
    return number if -INT64 <= number < INT64 else None


def id_text(value: object) -> str | None:
    """The text of an id (see the module's docstring), or None when it has none."""
    if type(value) is str:  # the commonest, and the dearest to check: remembered
        text = _TEXTS.get(value, "")  # "" is no id's text
        if text == "":
            if len(_TEXTS) >= _TEXTS_SIZE:
                _TEXTS.clear()
            text = _TEXTS[value] = _string_text(value)
        return text
    number = _whole(value)
    if number is not None:
        return str(number)
    if isinstance(value, str):
        return _string_text(value)
    if type(value).__name__ == "ObjectId":
        return str(value)
    return None


_TEXTS: dict[str, str | None] = {}  # a string id -> its text, for the last strings seen (up to _TEXTS_SIZE)
_TEXTS_SIZE: Final = 100_000


def _string_text(value: str) -> str | None:
    if _PLAIN_RE.fullmatch(value) is None:
        return None
    if _ambiguous(value):
        text = MARK + value
        return text if len(text) <= MAX_LENGTH else None
    return value


def is_id_text(text: object) -> bool:
    """Whether ``text`` is the text of an id (as :func:`id_text` writes them)."""
    if not isinstance(text, str) or _TEXT_RE.fullmatch(text) is None:
        return False
    if _INTEGER_RE.fullmatch(text):
        return -INT64 <= int(text) < INT64
    return True


def checked(text: object) -> str | None:
    """``text`` when it is the text of an id, else None: for texts read back (an index entry, a subject)."""
    return text if isinstance(text, str) and is_id_text(text) else None


def id_value(text: str) -> Any:
    """The id whose text ``text`` is: the value to look it up with in MongoDB (an ObjectId, an int or a
    string; an int there matches every number of that value, whatever its type, as :func:`id_text` does).
    Raises ValueError when ``text`` is not the text of an id."""
    if not is_id_text(text):
        raise ValueError(f"not the text of an id: {text[:40]!r}")
    if text.startswith(MARK):
        return text[1:]
    if _OBJECT_ID_RE.fullmatch(text):
        from bson import ObjectId

        return ObjectId(text)
    if _INTEGER_RE.fullmatch(text):
        return int(text)
    return text
