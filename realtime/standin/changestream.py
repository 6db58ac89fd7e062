"""Change-stream cursors: where a stream starts, what it sees at each level, and how events render.

A cursor scans the oplog by sequence number. What it shows depends on its level (a collection, a
database, or the whole cluster), its options (``fullDocument``, ``fullDocumentBeforeChange``) and the
stages after ``$changeStream``. Each batch ends with a ``postBatchResumeToken``: the last event's token
when the batch filled up, otherwise a high-water mark just past the newest oplog entry scanned, so the
token advances even when nothing matches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
import mongomock.aggregate
import mongomock.filtering
import pymongo.errors
from bson import Timestamp
from bson.raw_bson import RawBSONDocument

from realtime.standin import arguments, limits, tokens, validate
from realtime.standin.errors import CommandError, bad_value, history_lost, unsupported
from realtime.standin.oplog import Entry, Oplog
from realtime.standin.store import SYSTEM_DBS, Store, clone, expression_error, lower_pipeline, thawed

COLLECTION, DATABASE, CLUSTER = "collection", "database", "cluster"

FULL_DOCUMENT = ("default", "updateLookup", "whenAvailable", "required")
FULL_DOCUMENT_BEFORE_CHANGE = ("off", "whenAvailable", "required")
STAGE_OPTIONS = frozenset({
    "fullDocument", "fullDocumentBeforeChange", "resumeAfter", "startAfter", "startAtOperationTime",
    "showExpandedEvents", "allChangesForCluster", "allowToRunOnConfigDB", "allowToRunOnSystemNS",
})
EXPANDED_EVENTS = frozenset({"create", "createIndexes", "dropIndexes", "modify"})  # shown with showExpandedEvents
ALLOWED_STAGES = frozenset({
    "$match", "$project", "$addFields", "$set", "$unset", "$replaceRoot", "$replaceWith", "$redact",
})

_ID_MODIFIED = (
    "Encountered an event whose _id field, which contains the resume token, was modified by the "
    "pipeline. Modifying the _id field of an event makes it impossible to resume the stream from that "
    "point. Only transformations that retain the unmodified _id field are allowed."
)


@dataclass
class ChangeStreamCursor:
    id: int
    level: str
    db: str
    coll: str | None
    ns: str
    full_document: str
    before_change: str
    pipeline: list[dict[str, Any]]
    pos: int
    expect: str | None = None  # a resume token not yet seen in the oplog; the next later entry fails
    floor: str | None = None  # the client's own resume token: no PBRT sorts before it
    closed: bool = False
    stash: list[Mapping[str, Any]] = field(default_factory=list)  # events read but left out of a full batch
    ending: str | None = None  # the invalidate token, once the invalidating entry is read
    expanded: bool = False  # showExpandedEvents: DDL events, collectionUUID, operationDescription, disambiguatedPaths


def open_cursor(cursor_id: int, cmd: dict[str, Any], target: str | None, oplog: Oplog) -> ChangeStreamCursor:
    """Validate an ``aggregate`` whose first stage is ``$changeStream`` and place its cursor. ``target`` is the
    collection the aggregate names, None for ``aggregate: 1``; ``cmd`` has been through :func:`arguments.parse`."""
    db = cmd["$db"]
    pipeline = cmd["pipeline"]
    spec = pipeline[0]["$changeStream"]
    if not isinstance(spec, dict):
        raise CommandError(50808, "$changeStream stage expects a document as argument")
    for key in spec:
        if key not in STAGE_OPTIONS:
            raise CommandError(40415, f"BSON field '$changeStream.{key}' is an unknown field.")
    spec = arguments.parse_object("$changeStream", dict(spec), arguments.CHANGE_STREAM)
    for stage in pipeline[1:]:
        name = next(iter(stage), None) if isinstance(stage, dict) else None
        if name == "$changeStream":
            raise CommandError(40602, "$changeStream is only valid as the first stage in a pipeline")
        if name not in validate.PIPELINE_STAGES:
            raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
        if name == "$changeStreamSplitLargeEvent":
            raise unsupported("the stage $changeStreamSplitLargeEvent")
        if name not in ALLOWED_STAGES:
            raise CommandError(20, f"Stage {name} is not permitted in a $changeStream pipeline")
    level_ = (cmd.get("readConcern") or {}).get("level")
    if level_ not in (None, "majority"):
        raise CommandError(72, f"Read concern level '{level_}' is not supported with $changeStream; use 'majority'")

    if spec.get("allChangesForCluster"):
        if db != "admin" or target is not None:
            raise CommandError(
                73, "A $changeStream with 'allChangesForCluster:true' may only be opened on the 'admin' "
                    "database, and with no collection name")
        level, coll, ns = CLUSTER, None, "admin.$cmd.aggregate"
    elif target is None:
        if db in SYSTEM_DBS:
            raise CommandError(73, f"$changeStream may not be opened on the internal {db} database")
        level, coll, ns = DATABASE, None, f"{db}.$cmd.aggregate"
    else:
        if db in SYSTEM_DBS or target.startswith("system."):
            raise CommandError(73, f"cannot open $changeStream for internal {db}.{target} collection")
        level, coll, ns = COLLECTION, target, f"{db}.{target}"

    full_document = spec.get("fullDocument", "default")
    if full_document not in FULL_DOCUMENT:
        raise bad_value(f"'{full_document}' is not a valid value for $changeStream.fullDocument")
    before_change = spec.get("fullDocumentBeforeChange", "off")
    if before_change not in FULL_DOCUMENT_BEFORE_CHANGE:
        raise bad_value(f"'{before_change}' is not a valid value for $changeStream.fullDocumentBeforeChange")

    cursor = ChangeStreamCursor(cursor_id, level, db, coll, ns, full_document, before_change,
                                list(pipeline[1:]), pos=oplog.next_seq, expanded=bool(spec.get("showExpandedEvents")))
    _place(cursor, spec, oplog)
    return cursor


def _place(cursor: ChangeStreamCursor, spec: dict[str, Any], oplog: Oplog) -> None:
    resume_after = spec.get("resumeAfter")
    start_after = spec.get("startAfter")
    start_at = spec.get("startAtOperationTime")
    given = [o for o in (resume_after, start_after, start_at) if o is not None]
    if len(given) > 1:
        raise CommandError(
            40674, "Only one type of resume option is allowed, but multiple were found.")
    if not given:
        return
    if start_at is not None:
        if start_at < oplog.oldest_ts:
            raise history_lost()
        cursor.pos = oplog.first_seq_at_or_after(start_at)
        return
    token: Any = resume_after if resume_after is not None else start_after
    try:
        key = tokens.decode(token)
    except tokens.BadToken as exc:
        raise bad_value(str(exc)) from None
    data = token["_data"]
    if key.from_invalidate and resume_after is not None:
        raise CommandError(260, "Attempting to resume a change stream using 'resumeAfter' is not allowed "
                                "from an invalidate notification.")
    if key.cluster_time < oplog.oldest_ts:
        raise history_lost()
    cursor.floor = data
    if key.kind == tokens.HIGH_WATER_MARK or key.from_invalidate:
        cursor.pos = oplog.first_seq_after(data)
        return
    entry = oplog.find(data)
    if entry is not None:
        cursor.pos = entry.seq + 1
        return
    if oplog.first_seq_after(data) < oplog.next_seq:
        raise token_not_found(data)
    cursor.pos, cursor.expect = oplog.next_seq, data


def token_not_found(data: str) -> CommandError:
    return CommandError(280, f"cannot resume stream; the resume token was not found. {{_data: \"{data}\"}}",
                        ["NonResumableChangeStreamError"])


def _ns_of(entry: Entry) -> tuple[str, str | None]:
    assert entry.event is not None
    ns = entry.event["ns"]
    return ns["db"], ns.get("coll")


def _sees(cursor: ChangeStreamCursor, entry: Entry) -> bool:
    assert entry.event is not None
    if entry.op in EXPANDED_EVENTS and not cursor.expanded:
        return False
    db, coll = _ns_of(entry)
    if cursor.level == CLUSTER:
        return db not in SYSTEM_DBS and not (coll or "").startswith("system.")
    if db != cursor.db:
        return False
    if cursor.level == DATABASE:
        return not (coll or "").startswith("system.")
    if coll == cursor.coll:
        return True
    to = entry.event.get("to")
    return entry.op == "rename" and to is not None and to == {"db": cursor.db, "coll": cursor.coll}


def _invalidates(cursor: ChangeStreamCursor, entry: Entry) -> bool:
    if cursor.level == COLLECTION:
        return entry.op in ("drop", "rename")
    if cursor.level == DATABASE:
        return entry.op == "dropDatabase"
    return False


def render(cursor: ChangeStreamCursor, entry: Entry, store: Store | None) -> dict[str, Any]:
    """The event document this cursor shows for an entry, before the user's pipeline stages. It shares its
    sub-documents with the oplog entry: encode it, or :func:`clone` it before changing it."""
    assert entry.event is not None
    event = dict(entry.event)
    op = event["operationType"]
    out: dict[str, Any] = {"_id": dict(entry.token), "operationType": op, "clusterTime": entry.ts,
                           "wallTime": event.pop("wallTime")}
    event.pop("operationType")
    if op == "update":
        mode = cursor.full_document
        if mode == "updateLookup":
            assert store is not None
            db, coll = _ns_of(entry)
            current = store._raw(db, coll, event["documentKey"]["_id"]) if coll and store.exists(db, coll) \
                else None
            out["fullDocument"] = current
        elif mode in ("whenAvailable", "required"):
            if entry.post is None and mode == "required":
                raise CommandError(47, "Change stream was configured to require a post-image for all update "
                                       f"events, but the post-image was not found for event: {entry.data}")
            out["fullDocument"] = entry.post
    if not cursor.expanded:
        event.pop("collectionUUID", None)
        event.pop("operationDescription", None)
    elif op == "update":
        paths = disambiguated_paths(event["updateDescription"], entry.before or {})
        if paths:
            event["updateDescription"] = {**event["updateDescription"], "disambiguatedPaths": paths}
    out.update(event)
    if op in ("update", "replace", "delete") and cursor.before_change != "off":
        if entry.pre is None and cursor.before_change == "required":
            raise CommandError(47, "Change stream was configured to require a pre-image for all update, delete "
                                   f"and replace events, but the pre-image was not found for event: {entry.data}")
        out["fullDocumentBeforeChange"] = entry.pre
    return out


def _shown_as(cursor: ChangeStreamCursor, entry: Entry) -> tuple[Any, ...] | None:
    """What decides how a cursor shows an entry (cursors that agree show the same bytes), or None when the event
    is read afresh each time (an update's ``fullDocument: updateLookup``, the document as it is now)."""
    op = entry.op
    full = cursor.full_document if op == "update" else None
    if full == "updateLookup":
        return None
    before = cursor.before_change if op in ("update", "replace", "delete") else None
    return full, before, cursor.expanded


# A cursor with no options: how most cursors show an event, and how the oplog measures it.
_PLAIN = ChangeStreamCursor(0, CLUSTER, "", None, "", "default", "off", [], pos=0)


def encode_plain(entry: Entry) -> RawBSONDocument:
    """An entry as a change stream without options shows it, encoded as it is appended to the oplog (once, for
    every cursor that shows it so)."""
    return rendered(_PLAIN, entry, None)


def rendered(cursor: ChangeStreamCursor, entry: Entry, store: Store | None) -> RawBSONDocument:
    """The event this cursor shows for an entry, encoded once for every cursor that shows it alike."""
    kind = _shown_as(cursor, entry)
    if kind is not None:
        kept = entry.rendered
        for i in range(0, len(kept), 2):
            if kept[i] == kind:
                raw: RawBSONDocument = kept[i + 1]
                return raw
    raw = RawBSONDocument(bson.encode(render(cursor, entry, store)))
    if kind is not None:
        entry.rendered = (*entry.rendered, kind, raw)
    return raw


def disambiguated_paths(description: dict[str, Any], before: dict[str, Any]) -> dict[str, list[Any]]:
    """For each changed path with a component that could be either an array index or a field name (all digits),
    its components: array indices as integers, field names as strings (the document before the update tells
    which: a component under an array is an index)."""
    paths = [*description.get("updatedFields", {}), *description.get("removedFields", []),
             *(t["field"] for t in description.get("truncatedArrays", []))]
    out: dict[str, list[Any]] = {}
    for path in paths:
        parts = path.split(".")
        if not any(part.isdigit() for part in parts):
            continue
        value: Any = before
        components: list[Any] = []
        for part in parts:
            if isinstance(value, list) and part.isdigit():
                components.append(int(part))
                value = value[int(part)] if int(part) < len(value) else None
            else:
                components.append(part)
                value = value.get(part) if isinstance(value, dict) else None
        out[path] = components
    return out


def invalidate_event(entry: Entry, wall_time: Any) -> dict[str, Any]:
    key = tokens.decode(entry.token)
    token = tokens.make_token(entry.ts, tokens.EVENT, key.txn_op_index, ["invalidate", entry.data],
                              from_invalidate=True)
    return {"_id": token, "operationType": "invalidate", "clusterTime": entry.ts, "wallTime": wall_time}


def apply_pipeline(cursor: ChangeStreamCursor, doc: dict[str, Any]) -> dict[str, Any] | None:
    if not cursor.pipeline:
        return doc
    token = doc["_id"]
    result: dict[str, Any] | None = doc
    try:
        for stage in cursor.pipeline:
            name, arg = next(iter(stage.items()))
            if name == "$match":
                if not mongomock.filtering.filter_applies(arg, result):
                    return None
            else:
                out = mongomock.aggregate.process_pipeline([result], None, lower_pipeline([stage]), None)
                result = next(iter(out), None)
                if result is None:
                    return None
    except NotImplementedError as exc:
        raise unsupported(f"this $changeStream pipeline ({str(exc).splitlines()[0]})") from None
    except pymongo.errors.OperationFailure as exc:
        raise expression_error(exc) from None
    except (ValueError, TypeError, KeyError) as exc:
        raise bad_value(f"invalid $changeStream pipeline: {exc}") from None
    if result is None or result.get("_id") != token:
        raise CommandError(280, _ID_MODIFIED, ["NonResumableChangeStreamError"])
    return result


def scan(cursor: ChangeStreamCursor, oplog: Oplog, store: Store, batch_size: int | None
         ) -> tuple[list[Mapping[str, Any]], bool]:
    """Read what the oplog holds past the cursor. Returns the events and whether the batch filled up.

    A batch is cut by ``batch_size`` and by encoded bytes (:class:`limits.Batch`); events rendered but left
    out wait in the cursor's stash for the next batch, as the server stashes them. An event too big to send
    fails with ``BSONObjectTooLarge`` (10334), and the cursor is closed.
    """
    batch = limits.Batch(batch_size)
    try:
        while True:
            while cursor.stash:
                if not batch.offer(cursor.stash[0]):
                    return batch.docs, True
                cursor.stash.pop(0)
            if cursor.ending is not None:  # the invalidate event is out: the stream ends here
                cursor.closed, cursor.floor, cursor.ending = True, cursor.ending, None
                return batch.docs, False
            if batch.full:
                return batch.docs, True
            if cursor.pos >= oplog.next_seq:
                return batch.docs, False
            _read_next(cursor, oplog, store)
    except CommandError:
        cursor.closed = True
        raise


def _read_next(cursor: ChangeStreamCursor, oplog: Oplog, store: Store) -> None:
    """Move the cursor past the next oplog entry, stashing the events it shows for it."""
    if cursor.pos < oplog.first_seq:
        raise history_lost()
    entry = oplog.get(cursor.pos)
    assert entry is not None
    if cursor.expect is not None:
        if entry.data == cursor.expect:
            cursor.expect = None
            cursor.pos += 1
            return
        if entry.data > cursor.expect:
            raise token_not_found(cursor.expect)
    cursor.pos += 1
    if entry.event is None or not _sees(cursor, entry):
        return
    invalidated = _invalidates(cursor, entry)
    if not cursor.pipeline and not invalidated:  # the common case: the event as every such cursor shows it
        cursor.stash.append(rendered(cursor, entry, store))
        return
    docs = [{k: thawed(v) for k, v in render(cursor, entry, store).items()}]  # what stages read: dictionaries
    if invalidated:
        docs.append(invalidate_event(entry, docs[0]["wallTime"]))
    matching_only = all(next(iter(stage)) == "$match" for stage in cursor.pipeline)
    for i, doc in enumerate(docs):
        # $match reads the event; other stages change it, so they get a copy of their own.
        shown = apply_pipeline(cursor, doc if matching_only else clone(doc))
        if shown is not None:
            cursor.stash.append(rendered(cursor, entry, store) if i == 0 and matching_only else shown)
    if invalidated:
        cursor.ending = docs[-1]["_id"]["_data"]


def post_batch_resume_token(cursor: ChangeStreamCursor, oplog: Oplog, batch: list[Mapping[str, Any]],
                            filled: bool) -> dict[str, str]:
    if cursor.closed and cursor.floor is not None:
        return {"_data": cursor.floor}
    if filled and batch:
        return dict(batch[-1]["_id"])
    latest = oplog.latest_ts
    hwm = tokens.high_water_mark(Timestamp(latest.time, latest.inc + 1))
    if cursor.floor is not None and cursor.floor > hwm["_data"]:
        return {"_data": cursor.floor}
    return hwm
