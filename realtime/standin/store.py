"""Documents and their changes: CRUD over ``mongomock``, with every committed change sent to the oplog.

``mongomock`` does query matching, projection, sorting and the update operators (all but ``$mul`` and a
dotted ``$rename``, which are done here, as are the checks the server makes before it changes a
document, which mongomock would leave half updated). This module adds what a change stream needs from
a real server: it reads each document before and after a write, so the oplog gets exact
``updateDescription``s, pre-images and post-images; it turns no-op updates into no event at all, as
the server does; it keeps collection options (``changeStreamPreAndPostImages``) and UUIDs; and it runs
multi-document transactions.

Transactions apply their writes at once and keep an undo log; their events reach the oplog only at
commit, all with the commit's cluster time. A document written by an open transaction is locked: another
transaction that writes it fails with ``WriteConflict`` (112, ``TransientTransactionError``), and a write
outside any transaction waits for the lock (see :class:`Locked`). Reads do not wait: unlike a real
server, a read outside the transaction can see its uncommitted writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import bson
import mongomock
import mongomock.aggregate
import mongomock.collection
import mongomock.filtering
import mongomock.helpers
import mongomock.store
import pymongo.errors
from bson import Binary, Decimal128, Int64
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.raw_bson import RawBSONDocument

from realtime.standin import arrayfilters, arrayops, bsonorder, numbers, positional, validate
from realtime.standin.arguments import NUMBER, bson_type
from realtime.standin.errors import CommandError, bad_value, unsupported
from realtime.standin.indexes import IndexedStore
from realtime.standin.limits import (
    MAX_BSON_SIZE,
    bson_size,
    insert_too_large,
    show,
    update_too_large,
    upsert_too_large,
)
from realtime.standin.oplog import Change, Entry, Oplog
from realtime.standin.updatedesc import describe, same_document

log = logging.getLogger("realtime.standin")
T = TypeVar("T")

SYSTEM_DBS = ("admin", "local", "config")
ID_INDEX = {"v": 2, "key": {"_id": 1}, "name": "_id_"}

# -- indexes for mongomock -------------------------------------------------------------------------
# mongomock scans every document for every filter. Its collections are kept in IndexedStores instead
# (indexes.py), whose indexes name the few documents a filter may match; mongomock then applies the filter to
# those only. Results are the same documents, in the same order. mongomock's updates change a stored document
# in place, without telling the store: its indexes are told here.
mongomock.store.CollectionStore = IndexedStore
_scan = mongomock.collection.Collection._iter_documents


def _iter_documents(self: Any, filter: Any) -> Any:
    store = self._store
    if isinstance(filter, dict) and isinstance(store, IndexedStore):
        try:
            plan = store.plan(filter)
        except Exception:  # a scan answers the same
            log.exception("could not plan the filter %r; scanning", filter)
            plan = None
        if plan is not None:
            keys = store.candidates(plan)
            if not keys:  # the filter is still checked, as mongomock checks it on an empty collection
                mongomock.filtering.filter_applies(filter, {})
            docs = store._documents
            return (doc for doc in [docs[k] for k in keys] if mongomock.filtering.filter_applies(filter, doc))
    return _scan(self, filter)


def _reindexing(apply: Any) -> Any:
    def in_place(self: Any, existing_document: Any, *args: Any) -> Any:
        store = self._store
        held = store.holding(existing_document) if isinstance(store, IndexedStore) else None
        try:
            return apply(self, existing_document, *args)
        finally:
            if held is not None:
                store.updated(existing_document, held)

    return in_place


mongomock.collection.Collection._iter_documents = _iter_documents
for _name in ("_apply_update_document", "_apply_update_pipeline"):
    setattr(mongomock.collection.Collection, _name, _reindexing(getattr(mongomock.collection.Collection, _name)))


# -- mongomock's aggregation, corrected ------------------------------------------------------------
# mongomock's $group (with a constant _id) and $count emit a document even when no document reaches
# them ({n: 0}); the server emits none.
def _nothing_from_nothing(handler: Any) -> Any:
    def stage(in_collection: Any, database: Any, options: Any) -> Any:
        return handler(in_collection, database, options) if in_collection else []

    return stage


for _stage in ("$group", "$count"):
    mongomock.aggregate._PIPELINE_HANDLERS[_stage] = _nothing_from_nothing(
        mongomock.aggregate._PIPELINE_HANDLERS[_stage])


# -- $bsonSize, which mongomock does not know --------------------------------------------------------
_parse_expression = mongomock.aggregate._Parser.parse


def _parse_with_bson_size(parser: Any, expression: Any) -> Any:
    """``{$bsonSize: <object>}``: the object's size in encoded BSON bytes; null for null or a missing field."""
    if not (isinstance(expression, dict) and len(expression) == 1 and "$bsonSize" in expression):
        return _parse_expression(parser, expression)
    try:
        value = parser.parse(expression["$bsonSize"])
    except KeyError:
        return None
    if value is None:
        return None
    if not isinstance(value, dict | RawBSONDocument):
        raise pymongo.errors.OperationFailure(
            f"$bsonSize requires a document input, found: {bson_type(value)}", 31393)
    return len(value.raw) if isinstance(value, RawBSONDocument) else len(bson.encode(value))


mongomock.aggregate._Parser.parse = _parse_with_bson_size


# -- top-level field names that start with "$" ------------------------------------------------------
# MongoDB 5.0 and later store them ({_id: 1, $a: 1} is a valid insert); mongomock refuses them. Its other check
# (no NUL in a field name) stays.
mongomock.collection._validate_data_fields = mongomock.collection._recursive_key_check_null_character


# -- TTL indexes ----------------------------------------------------------------------------------
# mongomock removes expired documents whenever a collection is read, silently: no delete event, and a document
# inserted with a past date vanished before the insert could read it back. Expiry is the TTL monitor's
# (Store.expire), whose deletes are deletes like any other.
cast(Any, mongomock.store.CollectionStore)._remove_expired_documents = lambda self: None


# -- mongomock's clock ------------------------------------------------------------------------------
# $currentDate reads mongomock.utcnow(), which mongomock lets its users replace; its own calls
# datetime.utcnow(), deprecated from Python 3.12. The same value (naive UTC, millisecond precision like a
# BSON date), without the warning.
def _utcnow() -> dt.datetime:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


cast(Any, mongomock).utcnow = _utcnow  # (no stubs for it)


@dataclass
class CollectionInfo:
    uuid: Binary = field(default_factory=lambda: Binary(uuid.uuid4().bytes, 4))
    pre_and_post_images: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    txn: Transaction | None = None  # the open transaction that created it: nobody else sees it before the commit


class Locked(Exception):
    """A write outside any transaction touched a document an open transaction has written."""

    def __init__(self, txn: Transaction) -> None:
        super().__init__("document locked by an open transaction")
        self.txn = txn


@dataclass
class Transaction:
    lsid: dict[str, Any]
    number: int
    state: str = "open"  # open, committed, aborted
    changes: list[Change] = field(default_factory=list)
    undo: list[tuple[str, str, Any, dict[str, Any] | None]] = field(default_factory=list)
    locks: set[tuple[str, str, Any]] = field(default_factory=set)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    created: list[tuple[str, str]] = field(default_factory=list)  # collections it created (gone if it aborts)


@dataclass
class WriteResult:
    n: int = 0
    modified: int = 0
    upserted: Any = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


def _snapshot_unavailable() -> CommandError:
    return CommandError(239, "Unable to read from a snapshot due to pending collection catalog changes",
                        code_name="SnapshotUnavailable")


def _lock_key(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return bson.encode({"k": value})


def clone(value: T) -> T:
    """A copy of a document in which every sub-document and array is new (what mongomock changes in place) and
    the other values are shared (BSON's scalars: nothing changes them): ``copy.deepcopy`` of a BSON document,
    several times faster."""
    if isinstance(value, dict):
        return cast(T, {k: clone(v) for k, v in value.items()})
    if isinstance(value, list):
        return cast(T, [clone(v) for v in value])
    return value


def frozen(doc: dict[str, Any]) -> RawBSONDocument:
    """A document as it is now, encoded: what an event keeps of a whole document. It costs about what
    :func:`clone` does, takes a quarter of the memory, and goes into a reply as it is."""
    return RawBSONDocument(bson.encode(doc))


def thawed(value: Any) -> Any:
    """A :func:`frozen` document as the dictionary it was (naive UTC datetimes, as stored); anything else as it is."""
    return bson.decode(value.raw, _STORED) if isinstance(value, RawBSONDocument) else value


_STORED: CodecOptions[dict[str, Any]] = CodecOptions(datetime_conversion=DatetimeConversion.DATETIME_AUTO)


def _id_first(doc: dict[str, Any]) -> dict[str, Any]:
    if "_id" in doc and next(iter(doc)) != "_id":
        return {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    return doc


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, Int64, Decimal128)):
        return None
    return value.to_decimal() if isinstance(value, Decimal128) else value


class Store:
    def __init__(self, oplog: Oplog) -> None:
        self.oplog = oplog
        self.client: Any = mongomock.MongoClient()
        self.collections: dict[tuple[str, str], CollectionInfo] = {}
        self._mcolls: dict[tuple[str, str], Any] = {}
        self._catalog: list[Entry] = []  # the oplog's drops and renames, oldest first (snapshot reads check them)
        oplog.on_drop = self._forget
        self._scratch_client: Any = mongomock.MongoClient()
        self._scratch_depth = 0

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Any]:
        """An empty mongomock collection to work a document or a snapshot in, emptied afterwards. One client
        serves them all: a new one per use cost 9 us and left a cycle of objects (client, database, store) for
        the garbage collector, with the copies it held."""
        depth = self._scratch_depth
        self._scratch_depth += 1
        collection = self._scratch_client["scratch"][f"s{depth}"]
        try:
            yield collection
        finally:
            self._scratch_depth = depth
            collection.drop()

    # -- namespaces -----------------------------------------------------------------------------
    def _mcoll(self, db: str, coll: str) -> Any:
        found = self._mcolls.get((db, coll))
        if found is None:  # (mongomock makes a new Collection object at every look-up)
            found = self._mcolls[(db, coll)] = self.client[db][coll]
        return found

    def exists(self, db: str, coll: str) -> bool:
        return (db, coll) in self.collections

    def info(self, db: str, coll: str) -> CollectionInfo:
        return self.collections[(db, coll)]

    def visible(self, db: str, coll: str, txn: Transaction | None) -> bool:
        """Whether the collection exists for a command of ``txn`` (None: outside any transaction): one an open
        transaction created exists only inside that transaction until it commits."""
        meta = self.collections.get((db, coll))
        return meta is not None and (meta.txn is None or meta.txn is txn or meta.txn.state != "open")

    def ensure(self, db: str, coll: str, txn: Transaction | None = None) -> CollectionInfo:
        """Create a collection implicitly, as a first insert or upsert does; inside a transaction, as part of it."""
        meta = self.collections.get((db, coll))
        if meta is None:
            check_namespace(db, coll)
            self._mcoll(db, coll)._store.create()
            meta = CollectionInfo(txn=txn)
            self.collections[(db, coll)] = meta
            if txn is not None:
                txn.created.append((db, coll))
            self._record(txn, Change("create", db, coll, None, {"operationDescription": {"idIndex": dict(ID_INDEX)}}))
        elif meta.txn is not None and meta.txn is not txn and meta.txn.state == "open":
            # Another transaction's collection, not committed yet: its catalog entry is locked.
            if txn is None:
                raise Locked(meta.txn)
            raise CommandError(112, "Write conflict during plan execution and yielding is disabled.",
                               ["TransientTransactionError"])
        return meta

    def databases(self) -> list[str]:
        return sorted({db for db, _ in self.collections})

    def collection_names(self, db: str) -> list[str]:
        return sorted(c for d, c in self.collections if d == db)

    def documents(self, db: str, coll: str) -> Iterator[dict[str, Any]]:
        if not self.exists(db, coll):
            return iter(())
        return iter(self._mcoll(db, coll)._store.documents)

    # -- change capture ---------------------------------------------------------------------------
    def _images(self, db: str, coll: str) -> bool:
        meta = self.collections.get((db, coll))
        return bool(meta and meta.pre_and_post_images)

    def _record(self, txn: Transaction | None, change: Change) -> None:
        meta = self.collections.get((change.db, change.coll)) if change.coll is not None else None
        if meta is not None:  # shown with showExpandedEvents
            change.fields.setdefault("collectionUUID", meta.uuid)
        if txn is None:
            self._append([change])
        else:
            txn.changes.append(change)

    def _append(self, changes: list[Change], txn: dict[str, Any] | None = None) -> None:
        """Append to the oplog, and keep each change in its collection's history (for snapshot reads)."""
        for entry in self.oplog.append(changes, txn):
            assert entry.event is not None
            if entry.op in ("drop", "rename", "dropDatabase"):
                self._catalog.append(entry)
            elif "documentKey" in entry.event:
                store = self._history(entry)
                if store is not None:
                    store.record(entry, _store_key(entry.event["documentKey"]["_id"]))

    def _forget(self, entry: Entry) -> None:
        """An entry fell off the oplog: its collection's history lets it go."""
        if entry.event is not None and "documentKey" in entry.event:
            store = self._history(entry)
            if store is not None:
                store.forget(entry, _store_key(entry.event["documentKey"]["_id"]))

    def _history(self, entry: Entry) -> IndexedStore | None:
        assert entry.event is not None
        ns = entry.event["ns"]
        if (ns["db"], ns.get("coll")) not in self.collections:
            return None
        store = self._mcoll(ns["db"], ns["coll"])._store
        return store if isinstance(store, IndexedStore) else None

    def _raw(self, db: str, coll: str, key: Any) -> dict[str, Any] | None:
        store = self._mcoll(db, coll)._store
        k = mongomock.helpers.hashdict(key) if isinstance(key, dict) else key
        return store[k] if k in store else None  # noqa: SIM401 - not a dict

    def _claim(self, txn: Transaction | None, db: str, coll: str, key: Any,
               locks: dict[tuple[str, str, Any], Transaction]) -> None:
        """Check a document's lock before writing it; inside a transaction, take the lock."""
        lk = (db, coll, _lock_key(key))
        holder = locks.get(lk)
        if holder is not None and holder is not txn and holder.state == "open":
            if txn is None:
                raise Locked(holder)
            raise CommandError(112, "Write conflict during plan execution and yielding is disabled.",
                               ["TransientTransactionError"])
        if txn is not None:
            locks[lk] = txn
            txn.locks.add(lk)

    def _undo(self, txn: Transaction | None, db: str, coll: str, key: Any,
              before: dict[str, Any] | None) -> None:
        if txn is not None:
            txn.undo.append((db, coll, key, clone(before)))

    # -- writes ---------------------------------------------------------------------------------
    def insert(self, db: str, coll: str, doc: dict[str, Any], txn: Transaction | None,
               locks: dict[tuple[str, str, Any], Transaction]) -> None:
        if not isinstance(doc, dict):
            raise bad_value("document to insert must be an object")
        size = bson_size(doc)
        if size > MAX_BSON_SIZE:
            raise insert_too_large(size)
        doc = dict(doc)
        if "_id" not in doc:
            doc = {"_id": bson.ObjectId(), **doc}
        doc = _id_first(doc)
        validate.check_id(doc)
        self.ensure(db, coll, txn)
        self._claim(txn, db, coll, doc["_id"], locks)
        mc = self._mcoll(db, coll)
        stored = self._write(lambda: _insert_one(mc, doc), db, coll, doc)
        self._undo(txn, db, coll, doc["_id"], None)
        self._record(txn, Change("insert", db, coll, doc["_id"], {"fullDocument": frozen(stored)},
                                 post=None))

    def update(self, db: str, coll: str, query: dict[str, Any], update: Any, *, upsert: bool, multi: bool,
               array_filters: list[Any] | None, txn: Transaction | None,
               locks: dict[tuple[str, str, Any], Transaction], sort: Any = None) -> WriteResult:
        pipeline = isinstance(update, list)
        if pipeline:
            _check_update_pipeline(update, array_filters)
        elif not isinstance(update, dict):
            raise CommandError(9, "Update argument must be either an object or an array")
        operators = ["$pipeline"] if pipeline else [k for k in update if k.startswith("$")]
        replacement = not operators
        if not pipeline and operators and len(operators) != len(update):
            raise CommandError(9, f"Unknown modifier: {next(k for k in update if not k.startswith('$'))}."
                                  " Expected a valid update modifier or pipeline-style update specified as an array")
        if replacement and multi:
            raise CommandError(9, "multi update is not supported for replacement-style update")
        for op in [] if pipeline else operators:
            if op not in _UPDATE_OPERATORS:
                raise CommandError(9, f"Unknown modifier: {op}. Expected a valid update modifier or "
                                      "pipeline-style update specified as an array")
        if replacement:
            validate.check_id(update)
            if array_filters:
                raise CommandError(9, "arrayFilters may not be specified for a replacement-style update")
            filters: dict[str, dict[str, Any]] = {}
        elif pipeline:
            filters = {}
        else:
            _check_operators(update)
            filters = arrayfilters.parse(array_filters)
            arrayfilters.check_usage(update, filters)
        keys = self._matching_keys(db, coll, query, multi, sort)
        for key in keys:
            self._claim(txn, db, coll, key, locks)
        result = WriteResult()
        mc = self._mcoll(db, coll) if self.exists(db, coll) else None
        for key in keys:
            assert mc is not None
            before = clone(self._raw(db, coll, key))
            assert before is not None
            spec = _spec_for(key, query)
            try:
                if replacement:
                    if "_id" in update and not same_document({"_id": update["_id"]}, {"_id": key}):
                        raise CommandError(66, "After applying the update, the (immutable) field '_id' was "
                                               f"found to have been altered to _id: {update['_id']!r}")
                    new = {"_id": key, **{k: v for k, v in update.items() if k != "_id"}}
                    self._write(lambda new=new, spec=spec: mc.replace_one(spec, new), db, coll, new)
                elif pipeline:
                    new = self._run_update_pipeline(before, update)
                    if "_id" not in new:  # a pipeline that drops _id keeps the document's, as on the server
                        new = {"_id": key, **new}
                    if not same_document({"_id": new.get("_id")}, {"_id": key}):
                        raise CommandError(66, "After applying the update, the (immutable) field '_id' was "
                                               f"found to have been altered to _id: {new.get('_id')!r}")
                    self._write(lambda new=new, spec=spec: mc.replace_one(spec, new), db, coll, new)
                else:
                    concrete = arrayfilters.concrete(positional.resolve(update, before, query), before, filters)
                    ops = self._lower(concrete, before, insert=False)
                    if ops:  # empty when every operator was lowered to nothing (a $rename of a missing field)
                        self._write(lambda ops=ops, spec=spec: mc.update_one(spec, ops), db, coll, before, ops)
                changed = self._raw(db, coll, key)
                if changed is not None and bson_size(changed) > MAX_BSON_SIZE:
                    raise update_too_large()
            except CommandError:
                # mongomock applies operators in place and leaves a failed update half done; the
                # server's updates of one document are all or nothing.
                mc._store[_store_key(key)] = clone(before)
                raise
            # The change's own copy: later updates change the stored document's arrays and sub-documents in place,
            # and the event (its fullDocument, its updatedFields' values, its post-image) must not follow them.
            after = clone(self._raw(db, coll, key))
            assert after is not None
            result.n += 1
            if result.before is None:
                result.before, result.after = before, after
            if same_document(before, after):
                continue
            result.modified += 1
            self._undo(txn, db, coll, key, before)
            images = self._images(db, coll)
            if replacement:
                change = Change("replace", db, coll, key, {"fullDocument": frozen(after)},
                                pre=before if images else None, before=before)
            else:
                change = Change("update", db, coll, key, {"updateDescription": describe(before, after)},
                                pre=before if images else None, post=after if images else None, before=before)
            self._record(txn, change)
        if not keys and upsert:
            result.upserted = self._upsert(db, coll, query, update, replacement, filters, txn, locks)
            result.after = clone(self._raw(db, coll, result.upserted))
        return result

    def _upsert(self, db: str, coll: str, query: dict[str, Any], update: dict[str, Any], replacement: bool,
                filters: dict[str, dict[str, Any]], txn: Transaction | None,
                locks: dict[tuple[str, str, Any], Transaction]) -> Any:
        self.ensure(db, coll, txn)
        mc = self._mcoll(db, coll)
        if replacement:
            doc = dict(update)
            if "_id" not in doc:
                qid = query.get("_id")
                doc = {"_id": qid if qid is not None and _is_plain_id(qid) else bson.ObjectId(), **doc}
            doc = _id_first(doc)
            if bson_size(doc) > MAX_BSON_SIZE:
                raise upsert_too_large()
            self._claim(txn, db, coll, doc["_id"], locks)
            self._write(lambda: mc.insert_one(doc), db, coll, doc)
            key = doc["_id"]
        elif isinstance(update, list):  # the query's equalities, then the pipeline
            base = self._upsert_base(query)
            doc = _id_first(self._run_update_pipeline(base, update))
            if "_id" not in doc:
                doc = {"_id": bson.ObjectId(), **doc}
            if bson_size(doc) > MAX_BSON_SIZE:
                raise upsert_too_large()
            self._claim(txn, db, coll, doc["_id"], locks)
            self._write(lambda: mc.insert_one(doc), db, coll, doc)
            key = doc["_id"]
        else:
            base = self._upsert_base(query)
            concrete = arrayfilters.concrete(positional.resolve(update, base, None), base, filters)
            ops = self._lower(concrete, base, insert=True)
            ops = ops or {"$set": {}}
            if "_id" not in base and isinstance(ops.get("$set", {}).get("_id"), list):
                # The server applies the operators first and adds an _id after; an array made there is refused.
                raise CommandError(53, "The '_id' value cannot be of type array")
            res = self._write(lambda: mc.update_one(query, ops, upsert=True), db, coll, base, ops)
            key = res.upserted_id
            stored = self._raw(db, coll, key)
            assert stored is not None
            if bson_size(stored) > MAX_BSON_SIZE:
                mc.delete_one({"_id": key})
                raise upsert_too_large()
            self._claim(txn, db, coll, key, locks)
            if next(iter(stored)) != "_id":  # real MongoDB puts _id first
                fixed = _id_first(clone(stored))
                mc.replace_one({"_id": key}, fixed)
        stored = self._raw(db, coll, key)
        assert stored is not None
        self._undo(txn, db, coll, key, None)
        self._record(txn, Change("insert", db, coll, key, {"fullDocument": frozen(stored)}))
        return key

    def _run_update_pipeline(self, doc: dict[str, Any], pipeline: list[dict[str, Any]]) -> dict[str, Any]:
        """A pipeline-style update applied to one document: the document the pipeline makes of it."""
        out = self._read(lambda: list(mongomock.aggregate.process_pipeline(
            [clone(doc)], None, lower_pipeline(pipeline), None)), update=True)
        if len(out) != 1 or not isinstance(out[0], dict):
            raise CommandError(2, "an update pipeline must produce exactly one document")
        return dict(out[0])

    def _upsert_base(self, query: dict[str, Any]) -> dict[str, Any]:
        """The document an upsert starts from: the query's equality conditions on plain fields."""
        with self.scratch() as scratch:
            self._write(lambda: scratch.update_one(query, {"$set": {}}, upsert=True), "scratch", "scratch", query)
            found = scratch.find_one({})
            base = dict(found) if found is not None else {}
        if isinstance(base.get("_id"), bson.ObjectId) and not _holds(query, base["_id"]):
            del base["_id"]  # mongomock's own, not the query's: the server adds an _id after the operators
        return base

    def delete(self, db: str, coll: str, query: dict[str, Any], *, limit: int, txn: Transaction | None,
               locks: dict[tuple[str, str, Any], Transaction], sort: Any = None) -> WriteResult:
        keys = self._matching_keys(db, coll, query, multi=limit == 0, sort=sort)
        for key in keys:
            self._claim(txn, db, coll, key, locks)
        result = WriteResult()
        images = self._images(db, coll)
        for key in keys:
            before = clone(self._raw(db, coll, key))
            self._mcoll(db, coll).delete_one({"_id": key})
            result.n += 1
            if result.before is None:
                result.before = before
            self._undo(txn, db, coll, key, before)
            self._record(txn, Change("delete", db, coll, key, {}, pre=before if images else None, before=before))
        return result

    def _lower(self, update: dict[str, Any], doc: dict[str, Any], insert: bool) -> dict[str, Any]:
        """Refuse the operands the server refuses (before mongomock half-applies them), and rewrite the
        operators mongomock lacks or gets wrong into ones it has. ``insert``: ``doc`` is an upsert's new document
        (``$setOnInsert`` applies to it only)."""
        ops = _viable(update if insert else {op: spec for op, spec in update.items() if op != "$setOnInsert"}, doc)
        _check_operands(ops, doc)
        for op in ("$min", "$max"):
            if op in ops:
                sets = _extremes(op, ops.pop(op), doc)
                if sets:
                    ops["$set"] = {**ops.get("$set", {}), **sets}
        for op in ("$inc", "$mul"):
            if op in ops:
                sets, kept = _arithmetic(op, ops.pop(op), doc)
                if sets:
                    ops["$set"] = {**ops.get("$set", {}), **sets}
                if kept:
                    ops[op] = kept
        for op in arrayops.OPERATORS & set(ops):  # computed here, written as the $set of the array they make
            for path, arg in ops.pop(op).items():
                current = _value_at(doc, path)  # (an array or missing: _check_operands refused the rest)
                made = arrayops.apply(op, None if current is _MISSING else current, arg)
                if made is not None:
                    ops["$set"] = {**ops.get("$set", {}), path: made}
        if "$rename" in ops:  # a $set of the destination and an $unset of the source; mongomock has no dots
            keep: dict[str, Any] = {}
            for source, target in ops.pop("$rename").items():
                for which, path in (("source", source), ("destination", target)):
                    array = _array_on(doc, path)
                    if array is not None:
                        raise CommandError(2, f"The {which} field cannot be an array element, '{path}' in doc with "
                                              f"_id: {show(doc.get('_id'))} has an array field called "
                                              f"'{array.rsplit('.', 1)[-1]}'")
                value = _get(doc, source)
                if value is _UNKNOWN or _get(doc, target) is _UNKNOWN:
                    keep[source] = target  # through a scalar: mongomock answers
                elif value is not _MISSING:
                    ops["$unset"] = {**ops.get("$unset", {}), source: ""}
                    ops["$set"] = {**ops.get("$set", {}), target: value}
            if keep:
                ops["$rename"] = keep
        if "$currentDate" in ops:  # the time now, as a $set: mongomock sets no array element
            ops["$set"] = {**ops.get("$set", {}), **{path: _now(arg) for path, arg in ops.pop("$currentDate").items()}}
        for op in ("$unset", "$pull"):  # nothing to remove from a missing field (mongomock may fail past an array)
            if op in ops:
                ops[op] = {path: arg for path, arg in ops[op].items() if _value_at(doc, path) is not _MISSING}
                if not ops[op]:
                    del ops[op]
        if "$unset" in ops:  # an array element is unset to null, as on the server; mongomock leaves it
            elements = {path for path in ops["$unset"] if _is_element(doc, path)}
            ops["$set"] = {**ops.get("$set", {}), **dict.fromkeys(elements)}
            ops["$unset"] = {path: arg for path, arg in ops["$unset"].items() if path not in elements}
            if not ops["$unset"]:
                del ops["$unset"]
        if "$set" in ops:
            ops["$set"] = _grow_arrays(ops["$set"], doc)
        return ops

    def _matching_keys(self, db: str, coll: str, query: Any, multi: bool, sort: Any) -> list[Any]:
        if not isinstance(query, dict):
            raise CommandError(14, "query must be an object")
        if not self.exists(db, coll):
            return []
        mc = self._mcoll(db, coll)
        cursor = self._read(lambda: mc.find(query, {"_id": 1}))
        if sort:
            cursor = cursor.sort(sort_list(sort))
        if not multi:
            cursor = cursor.limit(1)
        return [d["_id"] for d in self._read(lambda: materialize(cursor))]

    def access_plan(self, db: str, coll: str, query: dict[str, Any]) -> tuple[dict[str, Any], int, int] | None:
        """How a read of ``query`` finds its documents through the indexes: the ``explain`` stage, the index entries
        it reads and the documents it fetches; None when it scans the collection."""
        if not self.exists(db, coll):
            return None
        store = self._mcoll(db, coll)._store
        try:
            plan = store.plan(mongomock.helpers.patch_datetime_awareness_in_document(query))
        except Exception:  # what the read itself would say (it scans)
            return None
        if plan is None:
            return None
        return plan.describe(store.indexes), plan.cost, len(store.candidates(plan))

    def _write(self, fn: Any, db: str, coll: str, doc: dict[str, Any], ops: dict[str, Any] | None = None) -> Any:
        """Run a mongomock write; its errors as the server's. ``ops``: the update operators applied to ``doc``."""
        try:
            return fn()
        except pymongo.errors.DuplicateKeyError:
            if ops is not None:  # the document as the update would have made it: what collided
                with self.scratch() as scratch:
                    doc = _applied(scratch, doc, ops)
            raise self._duplicate_key(db, coll, doc, ops is not None) from None
        except pymongo.errors.WriteError as exc:
            if exc.code is None and "(immutable) field '_id'" in str(exc):
                raise CommandError(66, "Performing an update on the path '_id' would modify the immutable "
                                       "field '_id'") from None
            raise CommandError(exc.code or 2, str(exc)) from None
        except pymongo.errors.OperationFailure as exc:
            raise expression_error(exc) from None
        except NotImplementedError as exc:
            raise unsupported(str(exc).split("\n")[0] or "this update") from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise _not_applied("this update" if ops is not None else "this write") from None

    def _read(self, fn: Any, update: bool = False) -> Any:
        """Run a mongomock read; its errors as the server's. ``update``: the read is an update's (a pipeline-style
        update run as an aggregation), whose answer never carries a Python exception's text (:func:`_not_applied`);
        a query's keeps mongomock's message."""
        try:
            return fn()
        except pymongo.errors.OperationFailure as exc:
            raise expression_error(exc) from None
        except NotImplementedError as exc:
            raise unsupported(str(exc).split("\n")[0] or "this query") from None
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            if update:
                raise _not_applied("this update") from None
            raise CommandError(2, str(exc)) from None

    def _duplicate_key(self, db: str, coll: str, doc: dict[str, Any], updating: bool = False) -> CommandError:
        """Name the index and key that collide, as the server's E11000 message does (with ``keyPattern`` and
        ``keyValue``). ``updating``: ``doc`` is in the store already, so a collision is a second document with its
        key (and an update cannot collide on ``_id``)."""
        mc = self._mcoll(db, coll)
        candidates: list[tuple[str, list[tuple[str, Any]]]] = [] if updating else [("_id_", [("_id", 1)])]
        for name, index in mc._store.indexes.items():
            if index.get("unique"):
                candidates.append((name, list(index["key"])))
        for name, key in candidates:
            values = {}
            for path, _ in key:
                value: Any = doc
                for part in path.split("."):
                    value = value.get(part) if isinstance(value, dict) else None
                values[path] = value
            others = [d for d in mc._store.documents if _key_of(d, key) == values and d["_id"] != doc.get("_id")]
            if (others or (name == "_id_" and not updating)) and (
                    name != "_id_" or self._raw(db, coll, doc.get("_id")) is not None):
                pattern = {p: d for p, d in key}
                shown = ", ".join(f"{p}: {_show(v)}" for p, v in values.items())
                return CommandError(
                    11000,
                    f"E11000 duplicate key error collection: {db}.{coll} index: {name} dup key: {{ {shown} }}",
                    extra={"keyPattern": pattern, "keyValue": values},
                )
        return CommandError(11000, f"E11000 duplicate key error collection: {db}.{coll}")

    # -- snapshot reads ---------------------------------------------------------------------------------
    def snapshot(self, db: str, coll: str, ts: Any, hide: Sequence[Transaction] = (),
                 query: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """The documents matching ``query`` as they were at cluster time ``ts`` (``readConcern: snapshot`` with
        ``atClusterTime``), or now when ``ts`` is None, without the uncommitted writes of the transactions in
        ``hide``. Documents no later write touched are read as they are; the others are rebuilt by undoing
        those transactions' writes, then the oplog entries after ``ts``, newest first."""
        if ts is not None and ts < self.oplog.oldest_ts:
            raise CommandError(239, "Read timestamp is older than the oldest available timestamp.",
                               code_name="SnapshotTooOld")
        if ts is not None and ts > self.oplog.latest_ts:
            raise CommandError(2, f"atClusterTime {ts} is in the future")
        undone: dict[Any, tuple[Any, dict[str, Any] | None]] = {}  # key -> (_id, document at ts or None)
        for txn in hide:
            for tdb, tcoll, key, before in reversed(txn.undo):
                if (tdb, tcoll) == (db, coll):
                    undone[_lock_key(key)] = (key, before)
        if ts is not None:
            hidden = [key for key, _ in undone.values()]
            changed = self._changed_since(db, coll, self.oplog.first_seq_after_time(ts), query, hidden)
            if changed is None:
                changed = self._walk_since(db, coll, ts)
            undone.update(changed)
        out = []
        if self.exists(db, coll):
            current = self._read(lambda: materialize(self._mcoll(db, coll).find(query or {})))
            out = [d for d in current if _lock_key(d["_id"]) not in undone]
        for _, before in undone.values():
            if before is not None and (not query or self._read(
                    lambda before=before: mongomock.filtering.filter_applies(query, before))):
                out.append(clone(before))
        return out

    def _changed_since(self, db: str, coll: str, start: int, query: dict[str, Any] | None, also: list[Any]
                       ) -> dict[Any, tuple[Any, dict[str, Any] | None]] | None:
        """The documents that may match ``query`` (and those with the ``_id`` values in ``also``) and changed from
        oplog sequence number ``start`` on, each with what it was before its first such change (None: it did not
        exist), newest change first; found through the collection's indexes and their history. None when they
        cannot say (no index for the query, or an index younger than ``start``): :meth:`_walk_since` then reads
        the oplog."""
        for entry in reversed(self._catalog):
            if entry.seq < start:
                break
            event = entry.event
            assert event is not None
            if event["ns"]["db"] == db and (entry.op == "dropDatabase" or event["ns"].get("coll") == coll
                                             or (event.get("to") or {}).get("coll") == coll):
                raise _snapshot_unavailable()
        while self._catalog and self._catalog[0].seq < self.oplog.first_seq:
            self._catalog.pop(0)
        if not query or not self.exists(db, coll):
            return None
        store = self._mcoll(db, coll)._store
        try:
            plan = store.plan(mongomock.helpers.patch_datetime_awareness_in_document(query), scan_share=math.inf)
        except Exception:  # the walk then says what is wrong with the query, if anything
            return None
        keys = store.history_candidates(plan, start) if plan is not None else None
        if keys is None:
            return None
        for doc_key in also:
            with contextlib.suppress(TypeError):
                keys.add(_store_key(doc_key))
        found = []
        for key in keys:
            since = [entry for entry in store.changes_of(key) if entry.seq >= start]
            if since:
                found.append((since[-1].seq, since[0]))
        found.sort(key=lambda item: -item[0])  # the order a walk from the newest entry meets them in
        out: dict[Any, tuple[Any, dict[str, Any] | None]] = {}
        for _, first in found:
            doc_key = first.event["documentKey"]["_id"]
            out[_lock_key(doc_key)] = (doc_key, None if first.op == "insert" else first.before)
        return out

    def _walk_since(self, db: str, coll: str, ts: Any) -> dict[Any, tuple[Any, dict[str, Any] | None]]:
        """What :meth:`_changed_since` finds, for every document of the collection: the oplog after ``ts``,
        newest first."""
        out: dict[Any, tuple[Any, dict[str, Any] | None]] = {}
        for entry in reversed(self.oplog.since(ts)):
            event = entry.event
            if event is None or event["ns"].get("db") != db:
                continue
            op = event["operationType"]
            if op in ("drop", "rename", "dropDatabase") and (op == "dropDatabase" or event["ns"].get("coll") == coll
                                                              or (event.get("to") or {}).get("coll") == coll):
                raise _snapshot_unavailable()
            if event["ns"].get("coll") == coll and "documentKey" in event:
                key = event["documentKey"]["_id"]
                out[_lock_key(key)] = (key, None if op == "insert" else entry.before)
        return out

    # -- transactions -----------------------------------------------------------------------------
    def commit(self, txn: Transaction, locks: dict[tuple[str, str, Any], Transaction]) -> None:
        info = {"lsid": txn.lsid, "txnNumber": Int64(txn.number)}
        self._append(txn.changes, txn=info)
        self._end(txn, "committed", locks)

    def abort(self, txn: Transaction, locks: dict[tuple[str, str, Any], Transaction]) -> None:
        if txn.state != "open":
            return
        for db, coll, key, before in reversed(txn.undo):
            mc = self._mcoll(db, coll)
            if before is None:
                mc.delete_one({"_id": key})
            else:
                mc.replace_one({"_id": key}, before, upsert=True)
        for db, coll in txn.created:  # never committed: no drop event either
            meta = self.collections.get((db, coll))
            if meta is not None and meta.txn is txn:
                self._mcoll(db, coll).drop()
                del self.collections[(db, coll)]
        self._end(txn, "aborted", locks)

    def _end(self, txn: Transaction, state: str, locks: dict[tuple[str, str, Any], Transaction]) -> None:
        txn.state = state
        for lk in txn.locks:
            if locks.get(lk) is txn:
                del locks[lk]
        for db, coll in txn.created:
            meta = self.collections.get((db, coll))
            if meta is not None and meta.txn is txn:
                meta.txn = None
        txn.changes, txn.undo, txn.created = [], [], []
        txn.ended.set()

    # -- DDL --------------------------------------------------------------------------------------
    def create(self, db: str, coll: str, options: dict[str, Any], txn: Transaction | None = None) -> None:
        check_namespace(db, coll)
        images = _images_option(options.get("changeStreamPreAndPostImages"))
        for key in options:
            if key in ("validator", "validationLevel", "validationAction"):
                raise unsupported(f"document validation (the create option '{key}')")
            if key not in ("changeStreamPreAndPostImages", "collation"):
                raise unsupported(f"the create option '{key}'")
        if self.exists(db, coll):
            meta = self.info(db, coll)
            if meta.options == options and txn is None:
                return
            raise CommandError(48, f"Collection {db}.{coll} already exists.")
        meta = self.ensure(db, coll, txn)
        meta.pre_and_post_images = bool(images)
        meta.options = dict(options)

    def coll_mod(self, db: str, coll: str, options: dict[str, Any]) -> None:
        if not self.exists(db, coll):
            raise CommandError(26, f"ns does not exist: {db}.{coll}")
        for key, value in options.items():
            if key == "changeStreamPreAndPostImages":
                enabled = _images_option(value)
                meta = self.info(db, coll)
                meta.pre_and_post_images = enabled
                meta.options = {**meta.options, key: {"enabled": enabled}}
            else:
                raise unsupported(f"the collMod option '{key}'")

    def drop(self, db: str, coll: str) -> bool:
        if not self.exists(db, coll):
            return False
        self._record(None, Change("drop", db, coll))
        self._mcoll(db, coll).drop()
        del self.collections[(db, coll)]
        return True

    def drop_database(self, db: str) -> None:
        names = self.collection_names(db)
        for name in names:
            self._record(None, Change("drop", db, name))
            self._mcoll(db, name).drop()
            del self.collections[(db, name)]
        if names:
            self._append([Change("dropDatabase", db, None)])
        self.client.drop_database(db)

    def rename(self, db: str, source: str, target: str, drop_target: bool) -> None:
        if not self.exists(db, source):
            raise CommandError(26, "Source collection does not exist")
        check_namespace(db, target)
        description: dict[str, Any] = {"to": {"db": db, "coll": target}}
        if self.exists(db, target):
            if not drop_target:
                raise CommandError(48, "Target namespace exists")
            description["dropTarget"] = self.collections[(db, target)].uuid
            self._mcoll(db, target).drop()
            del self.collections[(db, target)]
        docs = [clone(d) for d in self._mcoll(db, source)._store.documents]
        indexes = dict(self._mcoll(db, source)._store.indexes)
        meta = self.collections.pop((db, source))
        self._mcoll(db, source).drop()
        self.collections[(db, target)] = meta
        tgt = self._mcoll(db, target)
        tgt._store.create()
        for name, index in indexes.items():
            tgt._store.create_index(name, index)
        for d in docs:
            tgt._store[_store_key(d["_id"])] = d
        self._append([Change("rename", db, source, None, {"to": {"db": db, "coll": target},
                                                               "operationDescription": description,
                                                               "collectionUUID": meta.uuid})])

    def expire(self, locks: dict[tuple[str, str, Any], Transaction], now: dt.datetime | None = None) -> int:
        """One pass of the TTL monitor: delete the documents whose TTL index says they have expired, as the
        server's monitor does every 60 s (ttlMonitorSleepSecs). A TTL index has one field; a document expires when
        that field holds a date (or an array: its earliest date) older than ``expireAfterSeconds``; a document
        without a date there never expires. A document an open transaction holds is left for the next pass.
        Returns how many documents were deleted."""
        now = now or _utcnow()
        deleted = 0
        for (db, coll), meta in list(self.collections.items()):
            if meta.txn is not None and meta.txn.state == "open":
                continue
            for index in list(self._mcoll(db, coll)._store.indexes.values()):
                seconds = index.get("expireAfterSeconds")
                if seconds is None or len(index["key"]) != 1:
                    continue
                path = index["key"][0][0]
                cutoff = now - dt.timedelta(seconds=int(seconds))
                expired = [doc["_id"] for doc in self.documents(db, coll)
                           if (date := _earliest_date(_get(doc, path))) is not None and date <= cutoff]
                for key in expired:
                    try:
                        deleted += self.delete(db, coll, {"_id": key}, limit=1, txn=None, locks=locks).n
                    except Locked:
                        continue
        return deleted

    def record_ddl(self, op: str, db: str, coll: str, description: dict[str, Any]) -> None:
        """An index built or dropped, a collection's options changed: events only showExpandedEvents shows."""
        self._record(None, Change(op, db, coll, None, {"operationDescription": description}))


_PIPELINE_UPDATE_STAGES = frozenset({"$addFields", "$set", "$project", "$unset", "$replaceRoot", "$replaceWith"})


def _check_update_pipeline(pipeline: list[Any], array_filters: list[Any] | None) -> None:
    """What the server refuses in a pipeline-style update before it reads a document."""
    if array_filters:
        raise CommandError(72, "arrayFilters may not be specified for pipeline-style updates")
    for stage in pipeline:
        if not isinstance(stage, dict) or len(stage) != 1:
            raise CommandError(40323, "A pipeline stage specification object must contain exactly one field.")
        name = next(iter(stage))
        if name not in validate.PIPELINE_STAGES:
            raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
        if name not in _PIPELINE_UPDATE_STAGES:
            raise CommandError(72, f"{name} is not allowed to be used within an update")


_UPDATE_OPERATORS = frozenset({
    "$set", "$unset", "$inc", "$mul", "$min", "$max", "$push", "$pull", "$pullAll", "$addToSet", "$pop",
    "$rename", "$setOnInsert", "$currentDate",
})


_MISSING = object()  # no value at the path
_UNKNOWN = object()  # the path goes through an array or a scalar


def _get(doc: dict[str, Any], path: str) -> Any:
    """The value at a dotted path through sub-documents only."""
    value: Any = doc
    for part in path.split("."):
        if not isinstance(value, dict):
            return _UNKNOWN
        if part not in value:
            return _MISSING
        value = value[part]
    return value


def _value_at(doc: Any, path: str) -> Any:
    """The value at a dotted path through sub-documents and array indexes; ``_MISSING`` where the path ends
    early, ``_UNKNOWN`` where it goes through a scalar or names no index of an array."""
    value: Any = doc
    for part in path.split("."):
        if isinstance(value, dict):
            if part not in value:
                return _MISSING
            value = value[part]
        elif isinstance(value, list) and part.isdigit():
            if int(part) >= len(value):
                return _MISSING
            value = value[int(part)]
        else:
            return _UNKNOWN
    return value


def _arithmetic(op: str, spec: dict[str, Any], doc: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``$inc`` or ``$mul`` on ``doc`` as the ``$set`` it amounts to, with the server's result types and its
    refusal of an overflow (:mod:`numbers`); and the paths left to mongomock (through a scalar: it refuses them)."""
    sets: dict[str, Any] = {}
    kept: dict[str, Any] = {}
    for path, operand in spec.items():
        current = _value_at(doc, path)
        if current is _UNKNOWN:
            kept[path] = operand
        elif current is _MISSING:
            sets[path] = operand if op == "$inc" else numbers.zero_like(operand)
        elif numbers.kind(current) is None:
            raise CommandError(14, f"Cannot apply {op} to a value of non-numeric type. "
                                   f"{{_id: {_show(doc.get('_id'))}}} has the field '{path.rsplit('.', 1)[-1]}' "
                                   f"of non-numeric type {_type_name(current)}")
        else:
            try:
                sets[path] = (numbers.add if op == "$inc" else numbers.multiply)(current, operand)
            except numbers.Overflow:
                raise CommandError(2, f"Failed to apply {op} operations to current value "
                                      f"({numbers.debug_string(current)}) for document "
                                      f"{{_id: {_show(doc.get('_id'))}}}") from None
    return sets, kept


def _holds(value: Any, wanted: Any) -> bool:
    """Whether ``wanted`` is ``value`` or one of the values it holds, at any depth."""
    if isinstance(value, dict):
        return any(_holds(v, wanted) for v in value.values())
    if isinstance(value, list):
        return any(_holds(v, wanted) for v in value)
    return type(value) is type(wanted) and value == wanted


def _now(arg: Any) -> Any:
    """The value $currentDate sets: the date now, or a timestamp for {$type: "timestamp"}."""
    if isinstance(arg, dict) and arg.get("$type") == "timestamp":
        return mongomock.helpers.get_current_timestamp()
    return _utcnow()


def _is_element(doc: dict[str, Any], path: str) -> bool:
    """Whether ``path`` names an existing element of an array."""
    parent, _, last = path.rpartition(".")
    container = _value_at(doc, parent) if parent else doc
    return isinstance(container, list) and last.isdigit() and int(last) < len(container)


def _grow_arrays(sets: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """``$set`` paths that go past the end of an array, padded with nulls as on the server (``{a: []}`` set
    ``a.1.b`` is ``{a: [null, {b: ...}]}``), as the ``$set`` of the whole array, which mongomock applies; with them
    any other path into that array."""
    ends = {at for at in (_past_the_end(doc, path) for path in sets) if at is not None}
    outermost = sorted(at for at in ends if not any(at.startswith(other + ".") for other in ends))
    if not outermost:
        return sets
    grown: dict[str, list[Any]] = {at: clone(_value_at(doc, at)) for at in outermost}
    out: dict[str, Any] = {}
    for path, value in sets.items():
        into = next((g for g in grown if path.startswith(g + ".")), None)
        if into is None:
            out[path] = value
        else:
            _set_into(grown[into], path[len(into) + 1:].split("."), value)
    return {**out, **grown}


def _past_the_end(doc: dict[str, Any], path: str) -> str | None:
    """The path of the array ``path`` goes past the end of, if any."""
    value: Any = doc
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if isinstance(value, list) and part.isdigit():
            if int(part) >= len(value):
                return ".".join(parts[:depth])
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return None


def _set_into(node: Any, parts: list[str], value: Any) -> None:
    """Set ``value`` at ``parts`` under ``node``, creating documents and padding arrays with nulls on the way."""
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            index = int(part)
            node.extend([None] * (index + 1 - len(node)))
            if last:
                node[index] = value
                return
            if not isinstance(node[index], (dict, list)):
                node[index] = {}
            node = node[index]
        else:
            if last:
                node[part] = value
                return
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]


def _extremes(op: str, spec: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """``$min`` or ``$max`` on ``doc`` as the ``$set`` it amounts to: a field is set to the operand when it is
    missing or when the operand is below it (above it, for ``$max``) in BSON's order, whatever their types
    (compare_node.cpp); an equal value is left as it is."""
    sets: dict[str, Any] = {}
    for path, operand in spec.items():
        current = _value_at(doc, path)
        order = 0 if current is _MISSING else bsonorder.compare(operand, current)
        if current is _MISSING or (order < 0 if op == "$min" else order > 0):
            sets[path] = operand
    return sets


def _blocked(doc: dict[str, Any], path: str) -> tuple[str, str, Any] | None:
    """Where ``path`` cannot go in ``doc``: the field that cannot be created, and the name and value of the element
    it would have to go in (a scalar, or an array for a field that is no index); None when the path exists or
    can be created."""
    value: Any = doc
    taken = ""
    for part in path.split("."):
        if isinstance(value, dict):
            if part not in value:
                return None
            taken, value = part, value[part]
        elif isinstance(value, list) and part.isdigit():
            if int(part) >= len(value):
                return None
            taken, value = part, value[int(part)]
        else:
            return part, taken, value
    return None


def _viable(update: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """``update`` without what cannot apply to ``doc``: a path through a scalar (or through an array by a name
    that is no index) is PathNotViable (28) for an operator that would create it, and for the source of a
    $rename (rename_node.cpp); a no-op for one that only removes ($unset, $pull, $pullAll, $pop), as on the
    server (update_leaf_node.cpp, checkViability)."""
    out: dict[str, Any] = {}
    for op, spec in update.items():
        kept: dict[str, Any] = {}
        for path, arg in spec.items():
            creates = [arg] if op == "$rename" else [path] if op in _CREATING_OPERATORS else []
            for target in creates:
                where = _blocked(doc, target)
                if where is not None:
                    part, taken, value = where
                    raise CommandError(28, f"Cannot create field '{part}' in element {{{taken}: {show(value)}}}")
            where = _blocked(doc, path)
            if where is not None and op == "$rename":  # (rename_node.cpp: as most updates, for consistency)
                _, taken, value = where
                raise CommandError(28, f"cannot use the part ({taken} of {path}) to traverse the element "
                                       f"({{{taken}: {show(value)}}})")
            if where is None:
                kept[path] = arg
        if kept:
            out[op] = kept
    return out


def _earliest_date(value: Any) -> dt.datetime | None:
    """The date a TTL index reads in a value: the value if it is a date, the earliest date of an array."""
    if isinstance(value, dt.datetime):
        return _naive(value)
    if isinstance(value, list):
        dates = [_naive(v) for v in value if isinstance(v, dt.datetime)]
        return min(dates) if dates else None
    return None


def _naive(value: dt.datetime) -> dt.datetime:
    """A date as naive UTC, as mongomock's clock gives it."""
    return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def _type_name(value: Any) -> str:
    """The server's name for a value's BSON type."""
    return bson_type(value)


# The operators that can create the field they name (a $-prefixed one would then be stored).
_CREATING_OPERATORS = frozenset({"$set", "$setOnInsert", "$inc", "$mul", "$min", "$max", "$push", "$addToSet",
                                 "$currentDate"})


def _check_path(path: str) -> None:
    """An update path with an empty field name is refused (src/mongo/db/update/field_checker.cpp)."""
    if not path:
        raise CommandError(56, "An empty update path is not valid.")
    if "" in path.split("."):
        raise CommandError(56, f"The update path '{path}' contains an empty field name, which is not allowed.")


def _check_storable(path: str) -> None:
    """A field an update would create with a ``$``-prefixed name (other than ``$`` and ``$[...]``) cannot be
    stored (src/mongo/db/storage/storage_validation.cpp)."""
    for part in path.split("."):
        if part.startswith("$") and part != "$" and not (part.startswith("$[") and part.endswith("]")):
            raise CommandError(52, f"The dollar ($) prefixed field '{part}' in '{path}' is not valid for storage.")


def _array_on(doc: dict[str, Any], path: str) -> str | None:
    """The first array (by its path) that ``path`` goes through or ends at an element of, if any."""
    value: Any = doc
    parts = path.split(".")
    for depth, part in enumerate(parts):
        if isinstance(value, list):
            return ".".join(parts[:depth])
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return None


def _check_operators(update: dict[str, Any]) -> None:
    """What the server refuses as it parses an update, whatever the documents: operands of the wrong
    type, and two operators (or one twice) on the same path or on a path and its prefix."""
    paths: list[str] = []
    for op, spec in update.items():
        if not isinstance(spec, dict):
            raise CommandError(9, f"Modifiers operate on fields but we found type {_type_name(spec)} instead. "
                                  f"For example: {{$mod: {{<field>: ...}}}} not {{{op}: {_show(spec)}}}")
        paths.extend(spec)
        for path, arg in spec.items():
            _check_path(path)
            positional.check_path(path)
            if op in _CREATING_OPERATORS:
                _check_storable(path)
            if op == "$rename":
                if bson_type(arg) != "string":
                    raise CommandError(2, f"The 'to' field for $rename must be a string: {path}: {_show(arg)}")
                _check_path(arg)
                _check_storable(arg)
            if op in ("$inc", "$mul") and _number(arg) is None:
                verb = "increment" if op == "$inc" else "multiply"
                raise CommandError(14, f"Cannot {verb} with non-numeric argument: {{{path}: {_show(arg)}}}")
            if op in arrayops.OPERATORS:
                arrayops.check(op, path, arg)
            if op == "$currentDate":
                _check_current_date(arg)
            if op == "$pull" and isinstance(arg, dict):  # a condition on the elements: parsed as a filter is
                validate.check_filter({"x": arg} if arg and next(iter(arg)).startswith("$") else arg)
            if op == "$rename" and bson_type(arg) == "string":
                for which, name in (("source", path), ("destination", arg)):
                    if positional.has_positional(name) or "$[" in name:
                        raise CommandError(2, f"The {which} field for $rename may not be dynamic: {name}")
                if arg == path or arg.startswith(path + ".") or path.startswith(arg + "."):
                    raise CommandError(2, f"The source and target field for $rename must differ and not be on "
                                          f"the same path: {{{path}: {_show(arg)}}}")
                paths.append(arg)
    seen: list[list[str]] = []
    for path in paths:
        parts = path.split(".")
        for other in seen:
            common = min(len(parts), len(other))
            if parts[:common] == other[:common]:
                raise CommandError(40, f"Updating the path '{path}' would create a conflict at "
                                       f"'{'.'.join(parts[:common])}'")
        seen.append(parts)


def _check_current_date(arg: Any) -> None:
    """$currentDate takes a boolean or {$type: "date" | "timestamp"} (current_date_node.cpp): else BadValue."""
    if isinstance(arg, bool):
        return
    if not isinstance(arg, dict):
        raise CommandError(2, f"{bson_type(arg)} is not valid type for $currentDate. Please use a boolean ('true') or "
                              "a $type expression ({$type: 'timestamp/date'}).")
    for option in arg:
        if option != "$type":
            raise CommandError(2, f"Unrecognized $currentDate option: {option}")
    if arg.get("$type") not in ("date", "timestamp"):
        raise CommandError(2, "The '$type' string field is required to be 'date' or 'timestamp': "
                              "{$currentDate: {field : {$type: 'date'}}}")


def _check_operands(update: dict[str, Any], doc: dict[str, Any]) -> None:
    """What the server refuses as it applies an update to ``doc``: operators on values of the wrong type."""
    for op, spec in update.items():
        for path in spec:
            current = _value_at(doc, path)
            known = current is not _MISSING and current is not _UNKNOWN
            leaf = path.rsplit(".", 1)[-1]
            if op == "$inc":
                if known and _number(current) is None:
                    raise CommandError(14, f"Cannot apply $inc to a value of non-numeric type. "
                                           f"{{_id: {_show(doc.get('_id'))}}} has the field '{leaf}' of "
                                           f"non-numeric type {_type_name(current)}")
            elif op in ("$push", "$addToSet", "$pop", "$pull", "$pullAll") and known and not isinstance(current, list):
                kind = _type_name(current)
                if op == "$push":
                    raise CommandError(2, f"The field '{path}' must be an array but is of type {kind} in "
                                          f"document {{_id: {_show(doc.get('_id'))}}}")
                if op == "$addToSet":
                    raise CommandError(2, f"Cannot apply $addToSet to non-array field. Field named '{leaf}' "
                                          f"has non-array type {kind}")
                if op == "$pop":
                    raise CommandError(14, f"Path '{path}' contains an element of non-array type '{kind}'")
                raise CommandError(2, "Cannot apply $pull to a non-array value")


def materialize(cursor: Any) -> list[dict[str, Any]]:
    """All of a mongomock cursor's results at once (iterating it copies the rest of the list at every step)."""
    return list(cursor._compute_results(with_limit_and_skip=True))


def nest_dotted(spec: dict[str, Any]) -> dict[str, Any]:
    """A ``$project`` specification with dotted paths (``{"ns.viewOn": "x"}``) as the nested one it means
    (``{ns: {viewOn: "x"}}``): mongomock would make a field literally named ``ns.viewOn`` of a computed one."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if "." not in key or key.startswith("$"):
            out[key] = value
            continue
        head, rest = key.split(".", 1)
        inner = out.setdefault(head, {})
        if not isinstance(inner, dict):
            raise CommandError(31249, f"Invalid $project :: caused by :: Path collision at {key}")
        inner.update(nest_dotted({rest: value}))
    return out


def lower_pipeline(pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline with what mongomock reads differently from the server rewritten into what it reads alike."""
    out: list[dict[str, Any]] = []
    for stage in pipeline:
        if isinstance(stage, dict) and isinstance(stage.get("$project"), dict):
            stage = {"$project": nest_dotted(stage["$project"])}
        elif isinstance(stage, dict) and "$unset" in stage:  # the exclusion $project it stands for
            fields = stage["$unset"] if isinstance(stage["$unset"], list) else [stage["$unset"]]
            if not fields or not all(isinstance(f, str) for f in fields):
                raise CommandError(31002, "$unset specification must be a string or an array of strings")
            stage = {"$project": nest_dotted(dict.fromkeys(fields, 0))}
        elif isinstance(stage, dict) and "$replaceWith" in stage:
            stage = {"$replaceRoot": {"newRoot": stage["$replaceWith"]}}
        out.append(stage)
    return out


def aggregate(collection: Any, pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """mongomock's aggregate, with a leading ``$match`` run as a query instead of over every document."""
    pipeline = lower_pipeline(pipeline)
    first = pipeline[0] if pipeline else {}
    if isinstance(first, dict) and list(first) == ["$match"]:
        docs = materialize(collection.find(first["$match"]))
        pipeline = pipeline[1:]
    else:
        docs = materialize(collection.find())
    return list(mongomock.aggregate.process_pipeline(docs, collection.database, pipeline, None))


def aggregate_docs(docs: list[dict[str, Any]], pipeline: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run the rest of a pipeline over documents a first stage produced."""
    return list(mongomock.aggregate.process_pipeline(docs, None, pipeline, None)) if pipeline else docs


def _not_applied(what: str) -> CommandError:
    """What mongomock failed at with a Python exception: a gap of the stand-in's, logged with its traceback, and
    answered as not supported (BadValue); the exception's text is never a client's answer."""
    log.warning("mongomock could not run %s", what, exc_info=True)
    return unsupported(what)


def expression_error(exc: pymongo.errors.OperationFailure) -> CommandError:
    """mongomock's error as the server's; an aggregation expression mongomock does not know (MongoDB does: it
    would be "Unrecognized expression" only for a name the server does not know either) is "not supported"."""
    message = str(exc)
    if message.startswith("Unrecognized expression"):
        return unsupported(f"the aggregation expression {message.split(' ', 2)[-1]}")
    return CommandError(exc.code or 2, message)


def _applied(scratch: Any, doc: dict[str, Any], ops: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with update operators applied, on an empty scratch collection (no indexes to collide with)."""
    scratch.insert_one(clone(doc))
    scratch.update_one({"_id": doc["_id"]}, ops)
    return cast(dict[str, Any], scratch.find_one({"_id": doc["_id"]}))


def _is_plain_id(value: Any) -> bool:
    return not isinstance(value, (dict, list)) and not hasattr(value, "pattern")


def _as_stored(value: Any) -> Any:
    """What mongomock stores for a value (``patch_datetime_awareness_in_document``: datetimes as naive UTC to the
    millisecond, an empty Timestamp as now), copying only the containers it changes."""
    if isinstance(value, dict):
        changed: Any = None
        for k, v in value.items():
            new = _as_stored(v)
            if new is not v:
                changed = dict(value) if changed is None else changed
                changed[k] = new
        return value if changed is None else changed
    if isinstance(value, list):
        items = [_as_stored(v) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is None and value.microsecond % 1000 == 0 else \
            mongomock.helpers.patch_datetime_awareness_in_document(value)
    if isinstance(value, bson.Timestamp) and not value.time and not value.inc:
        return mongomock.helpers.patch_datetime_awareness_in_document(value)
    return value


def _insert_one(mc: Any, doc: dict[str, Any]) -> dict[str, Any]:
    """mongomock's ``insert_one`` of a document the stand-in has checked already (it encodes as BSON, it has an
    ``_id``): the document as stored."""
    mongomock.collection._validate_data_fields(doc)
    key = _store_key(doc["_id"])
    store = mc._store
    if key in store:
        raise pymongo.errors.DuplicateKeyError("E11000 Duplicate Key Error", 11000)
    stored: dict[str, Any] = _as_stored(doc)
    store[key] = stored
    try:
        mc._ensure_uniques(stored)
    except pymongo.errors.DuplicateKeyError:
        del store[key]
        raise
    return stored


def _store_key(key: Any) -> Any:
    return mongomock.helpers.hashdict(key) if isinstance(key, dict) else key


def first_duplicate(docs: Any, paths: list[str], *, sparse: bool = False,
                    partial: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The key (path -> value) that two of ``docs`` share under a unique index on ``paths``, if any: what
    building that index over them would refuse. A missing field counts as null, but a sparse index skips
    documents that have none of its fields, and a partial index those its filter does not match."""
    seen: set[tuple[Any, ...]] = set()
    unhashable: list[tuple[Any, ...]] = []
    for doc in docs:
        if partial is not None and not mongomock.filtering.filter_applies(partial, doc):
            continue
        values = [_get(doc, path) for path in paths]
        if sparse and all(v is _MISSING for v in values):
            continue
        key = tuple(None if v is _MISSING or v is _UNKNOWN else v for v in values)
        try:
            if key in seen:
                return dict(zip(paths, key, strict=True))
            seen.add(key)
        except TypeError:  # a sub-document or an array in the key
            if key in unhashable:
                return dict(zip(paths, key, strict=True))
            unhashable.append(key)
    return None


def _key_of(doc: dict[str, Any], key: list[tuple[str, Any]]) -> dict[str, Any]:
    out = {}
    for path, _ in key:
        value: Any = doc
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[path] = value
    return out


def _show(value: Any) -> str:
    return show(value)


def _spec_for(key: Any, query: dict[str, Any]) -> dict[str, Any]:
    """A filter that selects one document and keeps the query's array matches for ``$``."""
    if "_id" in query:
        return {"$and": [{"_id": key}, query]} if not _is_plain_id(query["_id"]) else dict(query)
    return {"_id": key, **query}


def sort_values(values: list[Any]) -> list[Any]:
    """Values in BSON order, as the server's distinct returns them (it gathers them in an ordered set)."""
    try:
        return sorted(values, key=mongomock.filtering.BsonComparable)
    except TypeError:  # values mongomock cannot compare: as found
        return values


def sort_list(sort: Any) -> list[tuple[str, int]]:
    """A sort specification as (path, 1 or -1) pairs; what the server refuses, refused with its codes."""
    if not isinstance(sort, dict):
        raise bad_value("sort must be an object")
    out = []
    for path, direction in sort.items():
        if isinstance(direction, dict) and "$meta" in direction:
            raise unsupported("$meta in a sort")
        if bson_type(direction) not in NUMBER:
            raise CommandError(15974, f"Illegal key in $sort specification: {path}: {show(direction)}")
        value = direction.to_decimal() if isinstance(direction, Decimal128) else direction
        if value not in (1, -1):
            raise CommandError(15975, "$sort key ordering must be 1 (for ascending) or -1 (for descending)")
        out.append((path, int(value)))
    return out


def _images_option(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict) or not isinstance(value.get("enabled"), bool):
        raise CommandError(2, "changeStreamPreAndPostImages must be of the form {enabled: <bool>}")
    return bool(value["enabled"])


MAX_DATABASE_NAME = 63  # bytes (DatabaseName::kMaxDatabaseNameLength)
MAX_NAMESPACE = 255  # bytes of "db.collection" (NamespaceString::MaxNsLen)


def check_namespace(db: str, coll: str) -> None:
    if not db or any(c in db for c in '/\\. "$\x00'):
        raise CommandError(73, f"Invalid database name: '{db}'")
    if len(db.encode()) > MAX_DATABASE_NAME:
        raise CommandError(73, f"db name must be at most {MAX_DATABASE_NAME} characters, found: {len(db.encode())}")
    if len(f"{db}.{coll}".encode()) > MAX_NAMESPACE:
        raise CommandError(73, f"Fully qualified namespace is too long. Namespace: {db}.{coll} Max: {MAX_NAMESPACE}")
    if not coll or "$" in coll or "\x00" in coll:
        raise CommandError(73, f"Invalid collection name: {coll}")
    if coll.startswith("."):
        raise CommandError(73, f"Invalid namespace specified '{db}.{coll}'")
    if coll.endswith(".") or ".." in coll:  # valid on the server, but mongomock cannot hold such a collection
        raise unsupported(f"the collection name '{coll}' (ending in '.' or holding '..')")
