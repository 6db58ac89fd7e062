"""The collections' indexes, kept up to date on every write, and the planner that answers filters from them.

mongomock scans every document for every filter. :class:`IndexedStore` takes the place of mongomock's
``CollectionStore``: for each index created on a collection it keeps a sorted list of entries, one per
document and key (several for an array, as a multikey index has), and :meth:`IndexedStore.plan` answers a
filter with the documents a few ranges of entries name, in the order a scan would give them. mongomock then
applies the whole filter to each of those documents, as it did to every document before, so an index only
decides which documents are read, never what matches: a plan must name a superset of the matches.

An entry is a flat tuple: for each field of the index a *bracket* (a small int) and a value that orders within
it, then the document's insertion number and its key in the store::

    (STRING, "p1", NUMBER, 3, 17, ObjectId(...))      # index {postId: 1, n: 1}, document 17

The brackets follow the type brackets mongomock's comparisons use (numbers, strings, ObjectIds, booleans,
dates), so a range (``$gt``, ``$lte``, ...) is a range of entries within one bracket; what cannot be ordered
(sub-documents, arrays, binary data, ...) goes in one bracket by a hash of its value: equal values, equal hashes,
and a collision only adds a document that the filter then leaves out. Equality follows Python's ``==``, which
mongomock's matching uses: ``1``, ``1.0`` and ``True`` are equal there, so a search for one reads the others'
entries too.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import mongomock.filtering
import mongomock.helpers
import mongomock.store
from bson import ObjectId
from sortedcontainers import SortedList

NOTHING = mongomock.filtering.NOTHING
_REGEX = mongomock.filtering._RE_TYPES

# Brackets, in the order entries sort (the order only has to be the same everywhere).
NONE = 0  # the path leads nowhere (through a scalar, past the end of an array): never equal to anything
MISSING = 1  # the field is absent (equal to null in a filter)
NULL = 2
NAN = 3
NUMBER = 4  # int, float, Int64 (bool is not a number in mongomock's comparisons)
STRING = 5
OBJECT_ID = 6
BOOL = 7
DATE = 8  # a datetime with a time zone (the store keeps naive UTC ones; aware ones cannot be compared with those)
NAIVE_DATE = 9
HASHED = 10  # anything else mongomock can compare (sub-documents, arrays, binary data), by the hash of its value
UNORDERED = 11  # what mongomock cannot compare at all (Decimal128, Timestamp, MinKey): a range meets it and fails
INF = float("inf")  # after every bracket or insertion number in the same position of an entry
MAX_PREFIXES = 4096  # $in values times $in values over a compound index's fields, beyond which a field is not used
SCAN_SHARE = 0.5  # a plan that reads more than this share of the collection's documents: a scan is cheaper

Key = tuple[Any, ...]  # a bracket and a value


def _norm(value: Any) -> Any:
    """A hashable stand-in for ``value``: values equal under ``==`` get equal ones."""
    if isinstance(value, dict):
        return ("d", frozenset((k, _norm(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("l", tuple(_norm(v) for v in value))
    if isinstance(value, bytes):
        return ("b", bytes(value))
    if isinstance(value, uuid.UUID):
        return ("b", value.bytes)
    try:
        hash(value)
    except TypeError:  # (Decimal128, Regex, Code: unhashable) all in one bucket
        return ("?",)
    return value


def _hashed(value: Any) -> Key:
    try:
        mongomock.filtering._get_compare_type(value)
        bracket = HASHED
    except NotImplementedError:
        bracket = UNORDERED
    try:
        return (bracket, hash(_norm(value)))
    except TypeError:
        return (bracket, 0)


def key_of(value: Any) -> Key:
    """The bracket and value an entry holds for one of a document's values."""
    if value is NOTHING:
        return (MISSING, 0)
    if value is None:
        return (NULL, 0)
    if isinstance(value, str):
        return (STRING, value)
    if isinstance(value, bool):
        return (BOOL, int(value))
    if isinstance(value, (int, float)):
        return (NUMBER, value) if value == value else (NAN, 0)
    if isinstance(value, ObjectId):
        return (OBJECT_ID, value)
    if isinstance(value, dt.datetime):
        return (NAIVE_DATE if value.utcoffset() is None else DATE, value)
    return _hashed(value)


def equal_keys(value: Any, *, literal: bool = False) -> list[Key] | None:
    """The keys whose entries may hold a value ``==`` to ``value`` (a filter's equality, ``$eq`` or ``$in``);
    None for a regular expression, which matches rather than equals (unless ``literal``: ``$eq``)."""
    if isinstance(value, _REGEX) and not literal:
        return None
    key = key_of(value)
    if key[0] == NULL:
        return [key, (MISSING, 0)]
    if key[0] == BOOL:
        return [key, (NUMBER, key[1])]
    if key[0] == NUMBER and value in (0, 1):
        return [key, (BOOL, int(value == 1))]
    if key[0] == OBJECT_ID:  # mongomock also matches an array holding the ObjectId's hex string
        return [key, (STRING, str(value))]
    return [key]


_RANGE_BRACKETS = frozenset({NUMBER, STRING, OBJECT_ID, DATE, NAIVE_DATE})
_RANGE_OPERATORS = {"$gt": (True, False), "$gte": (True, True), "$lt": (False, False), "$lte": (False, True)}


@dataclass
class Range:
    """Bounds within one bracket: ``lo`` and ``hi`` are values (None: open), each inclusive or not."""

    bracket: int
    lo: Any = None
    lo_inclusive: bool = True
    hi: Any = None
    hi_inclusive: bool = True

    def bounds(self, prefix: Key) -> list[tuple[Key, Key]]:
        """The ranges of entries to read: the bounds, and the brackets a scan would fail to compare (so that the
        filter fails on them as it would in a scan, rather than leaving them out)."""
        failing = [UNORDERED] + ([NAIVE_DATE] if self.bracket == DATE else [DATE] if self.bracket == NAIVE_DATE
                                 else [])
        return [self._bounds(prefix), *(((*prefix, b), (*prefix, b + 0.5)) for b in failing)]

    def _bounds(self, prefix: Key) -> tuple[Key, Key]:
        b = self.bracket
        if self.lo is None:
            lo: Key = (*prefix, b)
        else:
            lo = (*prefix, b, self.lo) if self.lo_inclusive else (*prefix, b, self.lo, INF)
        if self.hi is None:
            hi: Key = (*prefix, b + 0.5)
        else:
            hi = (*prefix, b, self.hi, INF) if self.hi_inclusive else (*prefix, b, self.hi)
        return lo, hi


def _ranges(ops: dict[str, Any], multikey: bool) -> list[Range]:
    """The ranges a field's range operators allow, each enough on its own (a match is in every one of them): one
    per operator, or, for a field no document holds several values in, one per bracket with both bounds (with
    arrays, ``{$gt: 5, $lt: 3}`` matches ``[1, 10]``)."""
    out: list[Range] = []
    for op, (lower, inclusive) in _RANGE_OPERATORS.items():
        if op not in ops:
            continue
        value = ops[op]
        key = key_of(value)
        if key[0] not in _RANGE_BRACKETS:
            continue
        same = next((r for r in out if r.bracket == key[0]), None) if not multikey else None
        if same is None:
            same = Range(key[0])
            out.append(same)
        if lower and same.lo is None:
            same.lo, same.lo_inclusive = key[1], inclusive
        elif not lower and same.hi is None:
            same.hi, same.hi_inclusive = key[1], inclusive
        else:  # a second bound on the same side: keep the first (any one is a superset)
            continue
    return out


def _equalities(condition: Any) -> list[Key] | None:
    """The keys a field's condition needs one of (equality, ``$eq``, ``$in``), or None when it names none."""
    if isinstance(condition, dict) and condition and all(isinstance(k, str) and k.startswith("$") for k in condition):
        if "$eq" in condition:
            return equal_keys(condition["$eq"], literal=True)
        if isinstance(condition.get("$in"), (list, tuple)):
            keys: list[Key] = []
            for value in condition["$in"]:
                found = equal_keys(value)
                if found is None:
                    return None
                keys.extend(found)
            return list(dict.fromkeys(keys))
        return None
    if condition == {}:  # mongomock matches it on a document without the field, as it would {$ne: ...}
        return None
    return equal_keys(condition)


def _id_values(condition: Any) -> list[Any] | None:
    """The ``_id`` values a condition on ``_id`` needs one of, or None when it names none."""
    if isinstance(condition, dict) and condition and all(isinstance(k, str) and k.startswith("$") for k in condition):
        if "$eq" in condition:
            values = [condition["$eq"]]
        elif isinstance(condition.get("$in"), (list, tuple)):
            values = list(condition["$in"])
        else:
            return None
    else:
        values = [condition]
    if any(isinstance(v, (*_REGEX, list, tuple)) for v in values):
        return None
    return values


def _store_key(value: Any) -> Any:
    return mongomock.helpers.hashdict(value) if isinstance(value, dict) else value


def _path_keys(doc: dict[str, Any], path: str) -> tuple[list[Key], bool]:
    """The keys a document has under a path, and whether it has several (multikey)."""
    if "." in path:
        values = mongomock.filtering.iter_key_candidates(path, doc)
        if not values:
            return [(NONE, 0)], False
    else:
        values = [doc.get(path, NOTHING)]
    keys: list[Key] = []
    for value in values:
        keys.append(key_of(value))
        if isinstance(value, (list, tuple)):
            keys.extend(key_of(v) for v in value)
    return (keys, True) if len(keys) > 1 else (keys, False)


@dataclass
class Index:
    """The entries of one key pattern (the direction of each field does not matter here)."""

    paths: tuple[str, ...]
    entries: SortedList = field(default_factory=SortedList)
    multikey: list[bool] = field(default_factory=list)
    flat: bool = field(init=False, default=False)  # top-level fields only

    def __post_init__(self) -> None:
        self.multikey = [False] * len(self.paths)
        self.flat = not any("." in path for path in self.paths)

    def entries_of(self, doc: dict[str, Any], seq: int, key: Any) -> set[Key]:
        if self.flat:  # top-level fields holding no array: one entry, quickly
            if len(self.paths) == 1:
                value = doc.get(self.paths[0], NOTHING)
                if not isinstance(value, (list, tuple)):
                    return {(*key_of(value), seq, key)}
            else:
                flat: list[Any] = []
                for path in self.paths:
                    value = doc.get(path, NOTHING)
                    if isinstance(value, (list, tuple)):
                        break
                    flat.extend(key_of(value))
                else:
                    return {(*flat, seq, key)}
        per_path = []
        for i, path in enumerate(self.paths):
            keys, multi = _path_keys(doc, path)
            if multi:
                self.multikey[i] = True
            per_path.append(keys)
        if len(per_path) == 1:
            return {(*k, seq, key) for k in per_path[0]}
        return {(*itertools.chain.from_iterable(combo), seq, key) for combo in itertools.product(*per_path)}

    def add(self, doc: dict[str, Any], seq: int, key: Any) -> None:
        for entry in self.entries_of(doc, seq, key):
            self.entries.add(entry)

    def remove(self, doc: dict[str, Any], seq: int, key: Any) -> None:
        for entry in self.entries_of(doc, seq, key):
            self.entries.discard(entry)

    def count(self, lo: Key, hi: Key) -> int:
        return int(self.entries.bisect_right(hi) - self.entries.bisect_left(lo))

    def read(self, lo: Key, hi: Key) -> Iterator[Key]:
        start, stop = self.entries.bisect_left(lo), self.entries.bisect_right(hi)
        return iter(self.entries.islice(start, stop))


@dataclass
class Plan:
    """How a filter is answered: by ranges of one index's entries, ``_id`` look-ups, or a union of plans
    (``$or``). ``cost``: the entries or look-ups it reads."""

    cost: int
    index: str | None = None
    ranges: list[tuple[Key, Key]] = field(default_factory=list)
    ids: list[Any] = field(default_factory=list)
    union: list[Plan] = field(default_factory=list)

    def describe(self, indexes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """The plan as an ``explain`` stage (``indexes``: the collection's, for the key patterns)."""
        if self.union:
            return {"stage": "OR", "inputStages": [p.describe(indexes) for p in self.union]}
        name = self.index or "_id_"
        pattern = dict((indexes or {}).get(name, {"key": [("_id", 1)]})["key"])
        return {"stage": "IXSCAN", "indexName": name, "keyPattern": pattern, "keysExamined": self.cost}


class IndexedStore(mongomock.store.CollectionStore):
    """A collection's documents (mongomock's store) with its indexes kept up to date.

    Every change to a stored document goes through :meth:`__setitem__` or :meth:`__delitem__`, except mongomock's
    updates, which change a document in place: those are followed by :meth:`updated` (see ``store.py``).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.seq: dict[Any, int] = {}  # store key -> insertion number: the order a scan reads documents in
        self._next_seq = 0
        self.by_pattern: dict[tuple[str, ...], Index] = {}
        # The oplog's history of the documents, for snapshot reads (see record): each document's oplog entries,
        # oldest first (one entry, or a list), and, per key pattern, the documents as they were before each change
        # the oplog holds (entries keyed by the change's oplog sequence number), complete from versions_from on.
        self.changes: dict[Any, Any] = {}
        self.versions: dict[tuple[str, ...], Index] = {}
        self.versions_from: dict[tuple[str, ...], int] = {}
        self.recorded = -1  # the sequence number of the last oplog entry recorded

    # -- what mongomock calls -------------------------------------------------------------------------
    # Without mongomock's reader-writer lock: the stand-in reads and changes its stores from one thread, its event
    # loop's, and the lock (three locks and a generator each time) cost more than the rest of an insert's look-ups.
    def __contains__(self, key: Any) -> bool:
        if self._ttl_indexes:
            self._remove_expired_documents()
        return key in self._documents

    def __getitem__(self, key: Any) -> Any:
        if self._ttl_indexes:
            self._remove_expired_documents()
        return self._documents[key]

    def __setitem__(self, key: Any, doc: Any) -> None:
        old = self._documents.get(key)
        if old is None:
            seq = self._next_seq
            self._next_seq += 1
        else:
            seq = self.seq[key]
            for index in self.by_pattern.values():
                index.remove(old, seq, key)
        self._documents[key] = doc  # (without the writer lock: the stand-in changes its stores from one thread)
        self.seq[key] = seq
        for index in self.by_pattern.values():
            index.add(doc, seq, key)

    def __delitem__(self, key: Any) -> None:
        old = self._documents.get(key)
        del self._documents[key]
        seq = self.seq.pop(key, None)
        if old is not None and seq is not None:
            for index in self.by_pattern.values():
                index.remove(old, seq, key)

    def drop(self) -> None:
        super().drop()
        self.seq.clear()
        self.by_pattern.clear()
        self.changes.clear()
        self.versions.clear()
        self.versions_from.clear()

    def create_index(self, index_name: str, index_dict: dict[str, Any]) -> None:
        super().create_index(index_name, index_dict)
        self._build(self._pattern(index_dict))

    def drop_index(self, index_name: str) -> None:
        pattern = self._pattern(self.indexes[index_name]) if index_name in self.indexes else None
        super().drop_index(index_name)
        if pattern is not None and pattern not in {self._pattern(ix) for ix in self.indexes.values()}:
            self.by_pattern.pop(pattern, None)
            self.versions.pop(pattern, None)
            self.versions_from.pop(pattern, None)

    # -- in-place updates -----------------------------------------------------------------------------
    def holding(self, doc: Any) -> tuple[Any, list[tuple[Index, set[Key]]]] | None:
        """Before mongomock changes ``doc`` in place: its store key and entries, when it is a stored document."""
        if not self.by_pattern or not isinstance(doc, dict) or "_id" not in doc:
            return None
        try:
            key = _store_key(doc["_id"])
            stored = self._documents.get(key)
        except TypeError:
            return None
        if stored is not doc:
            return None
        seq = self.seq[key]
        return key, [(index, index.entries_of(doc, seq, key)) for index in self.by_pattern.values()]

    def updated(self, doc: dict[str, Any], held: tuple[Any, list[tuple[Index, set[Key]]]]) -> None:
        """After mongomock changed ``doc`` in place (or failed half-way): its entries follow."""
        key, before = held
        seq = self.seq[key]
        for index, old in before:
            new = index.entries_of(doc, seq, key)
            for entry in old - new:
                index.entries.discard(entry)
            for entry in new - old:
                index.entries.add(entry)

    # -- history --------------------------------------------------------------------------------------
    def record(self, entry: Any, key: Any) -> None:
        """An oplog entry (an ``Entry``) of a change to the document of store key ``key``."""
        kept = self.changes.get(key)
        if kept is None:
            self.changes[key] = entry
        elif isinstance(kept, list):
            kept.append(entry)
        else:
            self.changes[key] = [kept, entry]
        if entry.before is not None:
            for versions in self.versions.values():
                versions.add(entry.before, entry.seq, key)
        self.recorded = entry.seq

    def forget(self, entry: Any, key: Any) -> None:
        """An oplog entry that fell off the oplog (the oldest of its document's)."""
        kept = self.changes.get(key)
        if kept is entry:
            del self.changes[key]
        elif isinstance(kept, list) and kept and kept[0] is entry:
            kept.pop(0)
            if len(kept) == 1:
                self.changes[key] = kept[0]
        if entry.before is not None:
            for versions in self.versions.values():
                versions.remove(entry.before, entry.seq, key)

    def changes_of(self, key: Any) -> list[Any]:
        """The oplog entries of a document's changes, oldest first."""
        kept = self.changes.get(key)
        return [] if kept is None else kept if isinstance(kept, list) else [kept]

    def history_candidates(self, plan: Plan, start: int) -> set[Any] | None:
        """The store keys of the documents a plan names now, or named as they were before a change from oplog
        sequence number ``start`` on: every document that may have matched the plan's filter at that point. None
        when the history of an index the plan reads does not reach back that far."""
        if plan.union:
            out: set[Any] = set()
            for part in plan.union:
                found = self.history_candidates(part, start)
                if found is None:
                    return None
                out |= found
            return out
        if plan.index is None:
            keys = set()
            for value in plan.ids:
                try:
                    keys.add(_store_key(value))
                except TypeError:  # an unhashable _id value: no document has it
                    continue
            return keys
        pattern = self._pattern(self.indexes[plan.index])
        versions = self.versions.get(pattern)
        if versions is None or self.versions_from[pattern] > start:
            return None
        live = self.by_pattern[pattern]
        keys = {entry[-1] for lo, hi in plan.ranges for entry in live.read(lo, hi)}
        keys.update(entry[-1] for lo, hi in plan.ranges for entry in versions.read(lo, hi) if entry[-2] >= start)
        return keys

    # -- planning -------------------------------------------------------------------------------------
    def plan(self, filter: dict[str, Any], *, scan_share: float | None = None) -> Plan | None:
        """The cheapest way to find the documents ``filter`` may match, or None when a scan is as cheap (or, with
        ``scan_share``, when the plan reads more than that share of the documents)."""
        self._remove_expired_documents()
        best = self._plan(filter)
        share = SCAN_SHARE if scan_share is None else scan_share
        if best is None or best.cost > share * len(self._documents):
            return None
        return best

    def candidates(self, plan: Plan) -> list[Any]:
        """The store keys a plan names, once each, in the order a scan would read them."""
        found: dict[Any, int] = {}
        self._collect(plan, found)
        return [key for key, _ in sorted(found.items(), key=lambda item: item[1])]

    def _collect(self, plan: Plan, found: dict[Any, int]) -> None:
        seqs = self.seq
        if plan.union:
            for part in plan.union:
                self._collect(part, found)
        elif plan.index is None:
            for value in plan.ids:
                try:
                    key = _store_key(value)
                    seq = seqs.get(key)
                except TypeError:  # an unhashable _id value: no document has it
                    continue
                if seq is not None:
                    found[key] = seq
        else:
            index = self.by_pattern[self._pattern(self.indexes[plan.index])]
            for lo, hi in plan.ranges:
                for entry in index.read(lo, hi):
                    key = entry[-1]
                    seq = seqs.get(key)
                    if seq is not None:  # (always, unless a document changed behind the store's back)
                        found[key] = seq

    def _plan(self, filter: dict[str, Any]) -> Plan | None:
        conditions: dict[str, list[Any]] = {}
        alternatives: list[list[Any]] = []
        _gather(filter, conditions, alternatives)
        plans: list[Plan] = []
        for condition in conditions.get("_id", ()):
            values = _id_values(condition)
            if values is not None:
                plans.append(Plan(len(values), ids=values))
        for name, spec in self.indexes.items():
            index = self.by_pattern.get(self._pattern(spec))
            if index is not None:
                plan = _index_plan(name, index, conditions)
                if plan is not None:
                    plans.append(plan)
        for branches in alternatives:
            parts = [self._plan(branch) if isinstance(branch, dict) else None for branch in branches]
            if parts and all(p is not None for p in parts):
                union = [p for p in parts if p is not None]
                plans.append(Plan(sum(p.cost for p in union), union=union))
        return min(plans, key=lambda p: p.cost, default=None)

    # -- building -------------------------------------------------------------------------------------
    @staticmethod
    def _pattern(index_dict: dict[str, Any]) -> tuple[str, ...]:
        return tuple(path for path, _ in index_dict["key"])

    def _build(self, pattern: tuple[str, ...]) -> None:
        if pattern in self.by_pattern:
            return
        self.versions[pattern] = Index(pattern)  # (of the changes recorded from now on)
        self.versions_from[pattern] = self.recorded + 1
        index = Index(pattern)
        entries: list[Key] = []
        for key, doc in self._documents.items():
            entries.extend(index.entries_of(doc, self.seq[key], key))
        index.entries = SortedList(entries)
        self.by_pattern[pattern] = index

    def check(self) -> list[str]:
        """What differs between the indexes and the documents (a rebuild's entries): for tests."""
        problems = []
        for pattern, index in self.by_pattern.items():
            expected: set[Key] = set()
            for key, doc in self._documents.items():
                expected |= Index(pattern).entries_of(doc, self.seq[key], key)
            actual = set(index.entries)
            if actual != expected:
                problems.append(f"{pattern}: {len(expected - actual)} entries missing, {len(actual - expected)} extra")
        if list(self.seq) != list(self._documents) or sorted(self.seq.values()) != list(self.seq.values()):
            problems.append("insertion numbers out of step with the documents")
        return problems


def _gather(filter: dict[str, Any], conditions: dict[str, list[Any]], alternatives: list[list[Any]]) -> None:
    """Each field's conditions, through ``$and``; each ``$or``'s branches. Whatever else a filter holds only
    narrows what these find."""
    for name, value in filter.items():
        if not isinstance(name, str):
            continue
        if name == "$and" and isinstance(value, list):
            for part in value:
                if isinstance(part, dict):
                    _gather(part, conditions, alternatives)
        elif name == "$or" and isinstance(value, list) and value:
            alternatives.append(value)
        elif not name.startswith("$"):
            conditions.setdefault(name, []).append(value)


def _index_plan(name: str, index: Index, conditions: dict[str, list[Any]]) -> Plan | None:
    """Ranges of ``index``: equalities on its first fields, then perhaps a range on the next one."""
    prefixes: list[Key] = [()]
    last: list[Range] = []
    used = 0
    for i, path in enumerate(index.paths):
        options = conditions.get(path, ())
        keys = next((k for k in map(_equalities, options) if k is not None), None)
        if keys is not None:
            extended = [(*prefix, *key) for prefix in prefixes for key in keys]
            if len(extended) > MAX_PREFIXES and i > 0:
                break
            prefixes = extended
            used += 1
            continue
        for condition in options:
            if isinstance(condition, dict):
                last = _ranges(condition, index.multikey[i])
                if last:
                    break
        break
    if not used and not last:
        return None
    if not last:
        ranges = [(prefix, (*prefix, INF)) for prefix in prefixes]
        return Plan(sum(index.count(lo, hi) for lo, hi in ranges), index=name, ranges=ranges)
    choices = [[bounds for prefix in prefixes for bounds in r.bounds(prefix)] for r in last]
    costs = [sum(index.count(lo, hi) for lo, hi in ranges) for ranges in choices]
    cost = min(costs)
    return Plan(cost, index=name, ranges=choices[costs.index(cost)])
