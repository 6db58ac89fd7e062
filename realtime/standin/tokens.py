"""Resume tokens: ``{_data: <uppercase hex>}`` whose string order is the stream order.

The layout follows the server's KeyString encoding where it matters to clients:

* the first 18 hex characters are ``82`` followed by the clusterTime, 4 bytes of seconds and 4 bytes
  of increment, big-endian (SERVER-133517);
* then ``2B04`` (a version 2 token), the token type (``80`` = event, ``00`` = high-water mark, so a
  high-water mark at time T sorts before the events at T), the transaction operation index (8 hex
  digits), a from-invalidate flag, and a digest of the event's identity (namespace, document key,
  operation), so that distinct events never share a token;
* a trailing ``04``.

Comparing two tokens' ``_data`` strings therefore compares (clusterTime, tokenType, txnOpIndex,
fromInvalidate, identity), which is the order in which the stand-in's oplog emits them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import bson
from bson import Timestamp

EVENT = 0x80
HIGH_WATER_MARK = 0x00

_PREFIX = "82"
_VERSION = "2B04"


@dataclass(frozen=True, order=True)
class TokenKey:
    """The decoded, comparable part of a token."""

    time: int
    inc: int
    kind: int
    txn_op_index: int
    from_invalidate: bool
    digest: str

    @property
    def cluster_time(self) -> Timestamp:
        return Timestamp(self.time, self.inc)


def _digest(identity: Any) -> str:
    if identity is None:
        return ""
    return hashlib.sha1(bson.encode({"i": identity})).hexdigest()[:24].upper()


def make_token(
    ts: Timestamp,
    kind: int = EVENT,
    txn_op_index: int = 0,
    identity: Any = None,
    from_invalidate: bool = False,
) -> dict[str, str]:
    data = (
        f"{_PREFIX}{ts.time:08X}{ts.inc:08X}{_VERSION}{kind:02X}{txn_op_index:08X}"
        f"{1 if from_invalidate else 0:02X}{_digest(identity)}04"
    )
    return {"_data": data}


def high_water_mark(ts: Timestamp) -> dict[str, str]:
    return make_token(ts, HIGH_WATER_MARK)


class BadToken(ValueError):
    pass


def decode(token: Any) -> TokenKey:
    """Decode a token made by :func:`make_token`; raise :class:`BadToken` for anything else."""
    if not isinstance(token, dict) or not isinstance(token.get("_data"), str):
        raise BadToken("resume token must be a document with a string _data field")
    data: str = token["_data"]
    try:
        if not data.startswith(_PREFIX) or data[18:22] != _VERSION or not data.endswith("04"):
            raise ValueError
        return TokenKey(
            time=int(data[2:10], 16),
            inc=int(data[10:18], 16),
            kind=int(data[22:24], 16),
            txn_op_index=int(data[24:32], 16),
            from_invalidate=int(data[32:34], 16) == 1,
            digest=data[34:-2],
        )
    except ValueError:
        raise BadToken(f"unrecognised resume token: {data!r}") from None
