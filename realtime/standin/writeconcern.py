"""Write concerns a one-member replica set cannot satisfy, answered as MongoDB answers them.

The stand-in is the only member of ``rs0``, with no tags: ``w: 1`` and ``w: "majority"`` (and ``w: 0``) are met
the moment a write is applied. A larger ``w`` or a tag name cannot be met. The server finds that out only once it
has applied the write and starts waiting for acknowledgements, so the write stands and the reply is ``ok: 1`` with
a ``writeConcernError``: ``UnsatisfiableWriteConcern`` (100, "Not enough data-bearing nodes") for a number,
``UnknownReplWriteConcern`` (79) for a mode the replica set's configuration does not define.
"""

from __future__ import annotations

from typing import Any

from realtime.standin.arguments import NUMBER, bson_type, number_long

MEMBERS = 1


def unmet(cmd: dict[str, Any]) -> dict[str, Any] | None:
    """The ``writeConcernError`` for a command's ``writeConcern``, or None when it is met."""
    concern = cmd.get("writeConcern")
    if not isinstance(concern, dict) or concern.get("w") is None:
        return None
    w = concern["w"]
    shown: dict[str, Any] = {"w": w, "wtimeout": concern.get("wtimeout", 0), "provenance": "clientSupplied"}
    if "j" in concern:
        shown = {"w": w, "j": concern["j"], "wtimeout": shown["wtimeout"], "provenance": "clientSupplied"}
    if bson_type(w) == "string":
        if w == "majority":
            return None
        return {"code": 79, "codeName": "UnknownReplWriteConcern",
                "errmsg": f"No write concern mode named '{w}' found in replica set configuration",
                "errInfo": {"writeConcern": shown}}
    if bson_type(w) in NUMBER and number_long(w) > MEMBERS:
        return {"code": 100, "codeName": "UnsatisfiableWriteConcern", "errmsg": "Not enough data-bearing nodes",
                "errInfo": {"writeConcern": shown}}
    return None
