"""Command dispatch: one ``async`` method per MongoDB command the stand-in serves.

Each handler takes the command document and returns the reply document (without ``ok``,
``operationTime`` and ``$clusterTime``, which :meth:`Engine.run` adds). Failures raise
:class:`CommandError`; the connection never sees a Python exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import itertools
import logging
import platform
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import bson
from bson import Binary, Int64, ObjectId, Timestamp
from bson.raw_bson import RawBSONDocument

from realtime.standin import arguments, changestream, idl, limits, validate, writeconcern
from realtime.standin.changestream import ChangeStreamCursor
from realtime.standin.deadline import Deadline, exceeded
from realtime.standin.errors import (
    CommandError,
    bad_value,
    error_labels,
    unsupported,
)
from realtime.standin.faults import FAIL_GET_MORE, FailPoints
from realtime.standin.oplog import Oplog
from realtime.standin.store import (
    Locked,
    Store,
    Transaction,
    WriteResult,
    aggregate,
    aggregate_docs,
    check_namespace,
    clone,
    first_duplicate,
    materialize,
    sort_list,
    sort_values,
)

log = logging.getLogger("realtime.standin")

SERVER_VERSION = "7.0.14"
MAX_WIRE_VERSION = 21  # MongoDB 7.0
DEFAULT_BATCH = 101  # documents in the first batch of a cursor when the command names no batchSize
MAX_WRITE_BATCH = 100_000  # maxWriteBatchSize
TRANSACTION_LIFETIME = 60.0  # transactionLifetimeLimitSeconds
TTL_MONITOR_INTERVAL = 60.0  # ttlMonitorSleepSecs: how often expired documents are deleted
_NO_USER_UID = Binary(hashlib.sha256(b"").digest(), 0)
_NO_SIGNATURE = RawBSONDocument(bson.encode({"hash": Binary(b"\0" * 20), "keyId": Int64(0)}))  # (never changed)


class HangUp(Exception):
    """Close the connection without answering."""


@dataclass
class ListCursor:
    """A cursor over a result computed at once (find, aggregate, listCollections, listIndexes)."""

    id: int
    ns: str
    docs: list[dict[str, Any]]
    pos: int = 0
    time_left: float | None = None  # seconds left of its command's maxTimeMS (None: no limit)

    def take(self, limit: int | None) -> list[Mapping[str, Any]]:
        """The next batch: at most ``limit`` documents, cut by bytes (:class:`limits.Batch`)."""
        batch = limits.Batch(limit)
        while self.pos < len(self.docs) and batch.offer(self.docs[self.pos]):
            self.pos += 1
        return batch.docs

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.docs)


@dataclass
class Session:
    lsid: dict[str, Any]
    txn: Transaction | None = None
    txn_started: float = 0.0
    retried: dict[int, dict[str, Any]] = field(default_factory=dict)  # txnNumber -> reply
    number: int = -1  # the active txnNumber: of the open or last transaction, or of the last retryable write

    def check_not_older(self, number: int, transaction: bool) -> None:
        """A txnNumber below the session's active one is refused (transaction_participant.cpp, beginOrContinue)."""
        if number >= self.number:
            return
        current = "transaction" if self.txn is not None and self.txn.number == self.number else "retryable write"
        if transaction:
            message = (f"Cannot start transaction with {{ txnNumber: {number}, txnRetryCounter: 0 }} on session "
                       f"{_show_lsid(self.lsid)} because a newer {current} with txnNumberAndRetryCounter "
                       f"{{ txnNumber: {self.number}, txnRetryCounter: 0 }} has already started on this session.")
        else:
            message = (f"Retryable write with txnNumber {number} is prohibited on session {_show_lsid(self.lsid)} "
                       f"because a newer {current} with txnNumber {self.number} has already started on this "
                       "session.")
        raise CommandError(225, message)


def _coll_arg(cmd: dict[str, Any], name: str) -> str:
    """The collection a command names in its first field."""
    value = cmd.get(name)
    if not isinstance(value, str) or arguments.bson_type(value) != "string":  # (bson.Code is a str too)
        raise CommandError(2, f"collection name has invalid type {arguments.bson_type(value)}")
    if not value:
        raise CommandError(73, f"Invalid namespace specified '{cmd['$db']}.'")
    check_namespace(cmd["$db"], value)
    return value


def _collection_or_1(cmd: dict[str, Any], name: str) -> str | None:
    """The collection an aggregate names, or None for ``{aggregate: 1}`` (a database- or cluster-level one)."""
    value = cmd.get(name)
    if arguments.bson_type(value) in arguments.NUMBER:
        if value != 1:
            raise CommandError(2, f"Invalid command format: the '{name}' field must specify a collection name or 1")
        return None
    return _coll_arg(cmd, name)


def _show_lsid(lsid: dict[str, Any]) -> str:
    value = lsid.get("id")
    shown = str(uuid.UUID(bytes=bytes(value))) if isinstance(value, (bytes, Binary)) and len(value) == 16 else value
    return f'{{ id: UUID("{shown}") }}'


def _session_key(lsid: Any) -> bytes:
    if not isinstance(lsid, dict) or not isinstance(lsid.get("id"), (bytes, Binary)):
        raise bad_value("lsid must be an object with an id field holding a UUID")
    return bytes(lsid["id"])


class Engine:
    def __init__(self, oplog: Oplog, store: Store, host: str) -> None:
        self.oplog = oplog
        self.store = store
        self.host = host
        self.cursors: dict[int, ListCursor | ChangeStreamCursor] = {}
        self.sessions: dict[bytes, Session] = {}
        self.locks: dict[tuple[str, str, Any], Transaction] = {}
        self.failpoints = FailPoints()
        self.paused_until = 0.0
        self.started = time.time()
        self._cursor_ids = itertools.count(1_000_000_001)
        self.hang_up_all: Callable[[], None] = lambda: None
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]] = {
            "hello": self.hello, "isMaster": self.is_master, "ismaster": self.is_master,
            "ping": self.ping, "buildInfo": self.build_info, "buildinfo": self.build_info,
            "endSessions": self.end_sessions, "killCursors": self.kill_cursors, "getMore": self.get_more,
            "insert": self.insert, "update": self.update, "delete": self.delete,
            "findAndModify": self.find_and_modify, "findandmodify": self.find_and_modify,
            "find": self.find, "count": self.count, "distinct": self.distinct, "aggregate": self.aggregate,
            "create": self.create, "drop": self.drop, "dropDatabase": self.drop_database,
            "collMod": self.coll_mod, "renameCollection": self.rename_collection,
            "listCollections": self.list_collections, "listDatabases": self.list_databases,
            "createIndexes": self.create_indexes, "listIndexes": self.list_indexes,
            "dropIndexes": self.drop_indexes, "commitTransaction": self.commit_transaction,
            "abortTransaction": self.abort_transaction, "configureFailPoint": self.configure_fail_point,
            "getParameter": self.get_parameter, "connectionStatus": self.connection_status,
            "getCmdLineOpts": self.get_cmd_line_opts, "getLog": self.get_log, "hostInfo": self.host_info,
            "whatsmyuri": self.whats_my_uri, "serverStatus": self.server_status,
            "getFreeMonitoringStatus": self.free_monitoring, "dbStats": self.db_stats,
            "realtimeStandIn": self.control, "killAllSessions": self.kill_all_sessions,
            "killSessions": self.kill_sessions, "replSetGetStatus": self.repl_set_get_status,
            "replSetGetConfig": self.repl_set_get_config, "collStats": self.coll_stats, "explain": self.explain,
            "profile": self.profile,
        }

    # -- the entry point ----------------------------------------------------------------------------
    async def run(self, cmd: dict[str, Any], app_name: str | None = None) -> dict[str, Any]:
        """Run one command; returns the full reply, or raises :class:`HangUp`."""
        name = next(iter(cmd), "")
        labels_given: list[str] | None = None
        try:
            if self.paused_until > time.monotonic() and name != "realtimeStandIn":
                await asyncio.sleep(self.paused_until - time.monotonic())
            handler = self.handlers.get(name)
            if handler is None:
                raise CommandError(59, f"no such command: '{name}'")
            cmd = idl.parse(cmd)
            action = self.failpoints.check(name, app_name)
            write_concern_error = None
            if action is not None:
                if action.block_ms:
                    await asyncio.sleep(action.block_ms / 1000)
                if action.close_connection:
                    raise HangUp()
                labels_given = action.labels
                if action.error is not None:
                    raise action.error
                write_concern_error = action.write_concern_error
            if name in TIMED_COMMANDS and cmd.get("maxTimeMS") and self.failpoints.time_out():
                raise exceeded()
            reply = await handler(cmd)
            reply.setdefault("ok", 1.0)
            if name in WRITE_CONCERN_COMMANDS:
                write_concern_error = write_concern_error or writeconcern.unmet(cmd)
            if write_concern_error is not None:
                reply["writeConcernError"] = dict(write_concern_error)
                labels = labels_given if labels_given is not None else error_labels(
                    name, cmd, None, int(write_concern_error["code"]))
                if labels:
                    reply["errorLabels"] = labels
        except CommandError as exc:
            if labels_given is not None:
                exc.labels = list(labels_given)
            else:
                computed = error_labels(name, cmd, exc.code, None, name == "aggregate" and _is_change_stream(cmd))
                exc.labels = [*exc.labels, *(label for label in computed if label not in exc.labels)]
            reply = exc.reply()
        except HangUp:
            raise
        except Exception:
            log.exception("command %r failed inside the stand-in", name)
            reply = CommandError(1, f"internal error in the stand-in while running {name!r}").reply()
        return self.stamp(reply)

    def stamp(self, reply: dict[str, Any]) -> dict[str, Any]:
        """Add what every reply carries: ``operationTime`` and ``$clusterTime``."""
        now = self.oplog.latest_ts
        reply["operationTime"] = now
        reply["$clusterTime"] = {"clusterTime": now, "signature": _NO_SIGNATURE}
        return reply

    # -- handshake and server info -----------------------------------------------------------------
    def _hello_fields(self) -> dict[str, Any]:
        latest = self.oplog.latest_ts
        wall = dt.datetime.fromtimestamp(latest.time, dt.UTC)
        return {
            "topologyVersion": None, "helloOk": True, "setName": "rs0", "setVersion": 1,
            "hosts": [self.host], "primary": self.host, "me": self.host, "secondary": False,
            "electionId": ObjectId("7fffffff0000000000000001"),
            "lastWrite": {"opTime": {"ts": latest, "t": Int64(1)}, "lastWriteDate": wall,
                          "majorityOpTime": {"ts": latest, "t": Int64(1)}, "majorityWriteDate": wall},
            "maxBsonObjectSize": limits.MAX_BSON_SIZE, "maxMessageSizeBytes": limits.MAX_MESSAGE_SIZE,
            "maxWriteBatchSize": MAX_WRITE_BATCH, "localTime": dt.datetime.now(dt.UTC),
            "logicalSessionTimeoutMinutes": 30, "connectionId": 1, "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION, "readOnly": False,
        }

    async def hello(self, cmd: dict[str, Any]) -> dict[str, Any]:
        fields = self._hello_fields()
        fields.pop("topologyVersion")
        return {"isWritablePrimary": True, **fields}

    async def is_master(self, cmd: dict[str, Any]) -> dict[str, Any]:
        fields = self._hello_fields()
        fields.pop("topologyVersion")
        return {"ismaster": True, **fields}

    async def ping(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def build_info(self, cmd: dict[str, Any]) -> dict[str, Any]:
        major, minor, patch = (int(x) for x in SERVER_VERSION.split("."))
        return {"version": SERVER_VERSION, "gitVersion": "realtime-standin", "versionArray": [major, minor, patch, 0],
                "modules": [], "allocator": "system", "javascriptEngine": "none", "sysInfo": "deprecated",
                "bits": 64, "debug": False, "maxBsonObjectSize": limits.MAX_BSON_SIZE, "storageEngines": ["memory"],
                "openssl": {"running": "disabled", "compiled": "disabled"},
                "buildEnvironment": {"target_os": platform.system().lower(), "target_arch": platform.machine()}}

    def parameters(self) -> dict[str, Any]:
        """The server parameters ``getParameter`` reports: the ones the stand-in's behaviour follows."""
        return {
            "authenticationMechanisms": [],  # no authentication
            "enableTestCommands": 1,  # configureFailPoint is served
            "featureCompatibilityVersion": {"version": SERVER_VERSION.rsplit(".", 1)[0]},
            "logicalSessionTimeoutMinutes": 30,
            "maxTransactionLockRequestTimeoutMillis": 5,
            "periodicNoopIntervalSecs": 10,
            "requireApiVersion": False,
            "transactionLifetimeLimitSeconds": int(TRANSACTION_LIFETIME),
            "ttlMonitorSleepSecs": int(TTL_MONITOR_INTERVAL),
        }

    async def get_parameter(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``{getParameter: "*"}`` for all of them, or ``{getParameter: 1, <name>: 1, ...}``, as the server answers."""
        known = self.parameters()
        if cmd.get("getParameter") == "*":
            return known
        asked = [k for k in cmd if k != "getParameter" and k not in _GENERIC_FIELDS and k in known]
        if not asked:
            raise CommandError(72, "no option found to get")
        return {k: known[k] for k in asked}

    async def connection_status(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"authInfo": {"authenticatedUsers": [], "authenticatedUserRoles": []}}

    async def get_cmd_line_opts(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"argv": ["realtime", "mongo"], "parsed": {"replication": {"replSet": "rs0"}}}

    async def get_log(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd.get("getLog") == "*":
            return {"names": ["startupWarnings"]}
        return {"totalLinesWritten": 0, "log": []}

    async def host_info(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"system": {"hostname": self.host, "cpuArch": platform.machine()},
                "os": {"type": platform.system(), "name": platform.platform()}, "extra": {}}

    async def whats_my_uri(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"you": self.host}

    async def free_monitoring(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"state": "disabled"}

    async def server_status(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {"host": self.host, "version": SERVER_VERSION, "process": "mongod",
                "uptime": time.time() - self.started, "localTime": dt.datetime.now(dt.UTC),
                "oplog": {"entries": len(self.oplog), "bytes": self.oplog.size_bytes}}

    async def db_stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db = cmd["$db"]
        names = self.store.collection_names(db)
        objects = sum(sum(1 for _ in self.store.documents(db, n)) for n in names)
        return {"db": db, "collections": len(names), "objects": objects, "views": 0}

    # -- replica set, statistics, plans, profiler (what mongosh's rs.status(), rs.conf(), stats(), explain() ask) --
    def _admin_only(self, cmd: dict[str, Any], name: str) -> None:
        if cmd["$db"] != "admin":
            raise CommandError(13, f"{name} may only be run against the admin database.", code_name="Unauthorized")

    def replica_set_config(self) -> dict[str, Any]:
        """The one-member configuration of ``rs0``, as ``replSetGetConfig`` and ``local.system.replset`` hold it."""
        return {"_id": "rs0", "version": 1, "term": 1, "protocolVersion": Int64(1),
                "writeConcernMajorityJournalDefault": True,
                "members": [{"_id": 0, "host": self.host, "arbiterOnly": False, "buildIndexes": True, "hidden": False,
                             "priority": 1.0, "tags": {}, "secondaryDelaySecs": Int64(0), "votes": 1}],
                "settings": {"chainingAllowed": True, "heartbeatIntervalMillis": 2000, "heartbeatTimeoutSecs": 10,
                             "electionTimeoutMillis": 10000, "catchUpTimeoutMillis": -1,
                             "getLastErrorModes": {}, "getLastErrorDefaults": {"w": 1, "wtimeout": 0},
                             "replicaSetId": ObjectId("7fffffff0000000000000001")}}

    async def repl_set_get_status(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._admin_only(cmd, "replSetGetStatus")
        latest = self.oplog.latest_ts
        optime = {"ts": latest, "t": Int64(1)}
        wall = dt.datetime.fromtimestamp(latest.time, dt.UTC)
        started = dt.datetime.fromtimestamp(self.started, dt.UTC)
        return {"set": "rs0", "date": dt.datetime.now(dt.UTC), "myState": 1, "term": Int64(1),
                "heartbeatIntervalMillis": Int64(2000), "majorityVoteCount": 1, "writeMajorityCount": 1,
                "votingMembersCount": 1, "writableVotingMembersCount": 1,
                "optimes": {"lastCommittedOpTime": optime, "lastCommittedWallTime": wall, "appliedOpTime": optime,
                            "durableOpTime": optime, "lastAppliedWallTime": wall, "lastDurableWallTime": wall},
                "members": [{"_id": 0, "name": self.host, "health": 1.0, "state": 1, "stateStr": "PRIMARY",
                             "uptime": int(time.time() - self.started), "optime": optime, "optimeDate": wall,
                             "lastAppliedWallTime": wall, "lastDurableWallTime": wall, "syncSourceHost": "",
                             "syncSourceId": -1, "infoMessage": "", "electionTime": Timestamp(int(self.started), 1),
                             "electionDate": started, "configVersion": 1, "configTerm": 1, "self": True,
                             "lastHeartbeatMessage": ""}]}

    async def repl_set_get_config(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._admin_only(cmd, "replSetGetConfig")
        return {"config": self.replica_set_config()}

    def _stats(self, db: str, coll: str, scale: int) -> dict[str, Any]:
        if not self.store.exists(db, coll):
            raise CommandError(26, f"Collection [{db}.{coll}] not found.")
        docs = list(self.store.documents(db, coll))
        size = sum(limits.bson_size(d) for d in docs)
        indexes = ["_id_", *self._mcoll(db, coll)._store.indexes]
        index_size = 4096 * len(indexes)
        return {"ns": f"{db}.{coll}", "size": size // scale, "count": len(docs),
                "avgObjSize": size // len(docs) if docs else 0, "numOrphanDocs": 0, "storageSize": size // scale,
                "freeStorageSize": 0, "capped": False, "nindexes": len(indexes),
                "indexBuilds": [], "totalIndexSize": index_size // scale, "totalSize": (size + index_size) // scale,
                "indexSizes": {name: 4096 // scale for name in indexes}, "scaleFactor": scale}

    async def coll_stats(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "collStats")
        return self._stats(db, coll, max(int(cmd.get("scale") or 1), 1))

    def _coll_stats_stage(self, db: str, coll: str, spec: Any) -> list[dict[str, Any]]:
        """``$collStats`` (the first stage of its pipeline): one document of the statistics asked for."""
        if not isinstance(spec, dict):
            raise CommandError(5447000, "$collStats must take a nested object but found: " + limits.show(spec))
        out: dict[str, Any] = {"ns": f"{db}.{coll}", "host": self.host, "localTime": dt.datetime.now(dt.UTC)}
        if "storageStats" in spec:
            scale = (spec["storageStats"] or {}).get("scale", 1) if isinstance(spec["storageStats"], dict) else 1
            out["storageStats"] = self._stats(db, coll, max(int(scale or 1), 1))
        if "count" in spec:
            out["count"] = sum(1 for _ in self.store.documents(db, coll))
        if "latencyStats" in spec:
            zero = {"latency": Int64(0), "ops": Int64(0)}
            out["latencyStats"] = {"reads": zero, "writes": zero, "commands": zero, "transactions": zero}
        if "queryExecStats" in spec:
            out["queryExecStats"] = {"collectionScans": {"total": Int64(0), "nonTailable": Int64(0)}}
        return [out]

    async def explain(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """A plan for find, count, distinct, aggregate, update, delete or findAndModify: the index the stand-in reads
        (``IXSCAN``) or a collection scan; ``executionStats`` counts what the command returns, without running a
        write."""
        inner = cmd.get("explain")
        if not isinstance(inner, dict) or not inner:
            raise CommandError(9, "explain command requires a nested object")
        name = next(iter(inner))
        if name not in ("find", "count", "distinct", "aggregate", "update", "delete", "findAndModify",
                        "findandmodify"):
            raise CommandError(2, f"Explain failed due to unknown command: {name}")
        verbosity = cmd.get("verbosity", "allPlansExecution")
        if verbosity not in ("queryPlanner", "executionStats", "allPlansExecution"):
            raise CommandError(2, f"verbosity string must be one of {{'queryPlanner', 'executionStats', "
                                  f"'allPlansExecution'}}, got {verbosity!r}")
        db = cmd["$db"]
        coll = inner.get(name)
        if not isinstance(coll, str):
            raise CommandError(2, "explain of a command without a collection name is not supported by the "
                                  "realtime MongoDB stand-in")
        query = inner.get("filter") or inner.get("query") or {}
        if name == "update":
            query = (inner.get("updates") or [{}])[0].get("q") or {}
        elif name == "delete":
            query = (inner.get("deletes") or [{}])[0].get("q") or {}
        elif name == "aggregate":
            first = (inner.get("pipeline") or [{}])[0]
            query = first.get("$match") or {} if isinstance(first, dict) else {}
        validate.check_filter(query)
        access = self.store.access_plan(db, coll, query) if isinstance(query, dict) else None
        if access is None:
            plan: dict[str, Any] = {"stage": "COLLSCAN", "filter": query, "direction": "forward"}
        else:
            plan = {"stage": "FETCH", "filter": query, "inputStage": access[0]}
        reply: dict[str, Any] = {
            "explainVersion": "1",
            "queryPlanner": {"namespace": f"{db}.{coll}", "indexFilterSet": False, "parsedQuery": query,
                             "planCacheShapeHash": "00000000", "maxIndexedOrSolutionsReached": False,
                             "maxIndexedAndSolutionsReached": False, "maxScansToExplodeReached": False,
                             "winningPlan": plan, "rejectedPlans": []},
            "command": {**inner, "$db": db},
            "serverInfo": {"host": self.host, "port": int(self.host.rsplit(":", 1)[1]), "version": SERVER_VERSION,
                           "gitVersion": "realtime-standin"},
        }
        if verbosity != "queryPlanner":
            size = sum(1 for _ in self.store.documents(db, coll)) if self.store.exists(db, coll) else 0
            keys, examined = (0, size) if access is None else access[1:]
            matched = 0
            if size and name in ("find", "count", "distinct", "update", "delete", "findAndModify", "findandmodify"):
                mc = self._mcoll(db, coll)
                matched = self.store._read(lambda: mc.count_documents(query))
            reply["executionStats"] = {"executionSuccess": True, "nReturned": matched, "executionTimeMillis": 0,
                                       "totalKeysExamined": keys, "totalDocsExamined": examined,
                                       "executionStages": {**plan, "nReturned": matched, "docsExamined": examined}}
        return reply

    async def profile(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """The profiler's level: 0 (off), as it always is here; turning it on is refused, not ignored."""
        level = cmd.get("profile")
        if level not in (-1, 0):
            raise unsupported("the database profiler (profile levels 1 and 2)")
        return {"was": 0, "slowms": 100, "sampleRate": 1.0}

    async def kill_all_sessions(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """End every session's work: open transactions are aborted (their locks freed), cursors killed."""
        for session in self.sessions.values():
            if session.txn is not None and session.txn.state == "open":
                self.store.abort(session.txn, self.locks)
        self.cursors.clear()
        return {}

    async def kill_sessions(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for lsid in cmd.get("killSessions") or []:
            session = self.sessions.get(_session_key(lsid))
            if session is not None and session.txn is not None and session.txn.state == "open":
                self.store.abort(session.txn, self.locks)
        return {}

    # -- sessions and transactions -------------------------------------------------------------------
    def _session(self, cmd: dict[str, Any]) -> Session | None:
        lsid = cmd.get("lsid")
        if lsid is None:
            return None
        key = _session_key(lsid)
        session = self.sessions.get(key)
        if session is None:
            session = Session({"id": Binary(key, 4), "uid": _NO_USER_UID})
            self.sessions[key] = session
        return session

    def _transaction(self, cmd: dict[str, Any]) -> Transaction | None:
        """The open transaction this command belongs to (starting it if asked), or None; what the server refuses
        (src/mongo/db/transaction/transaction_participant.cpp) refused with its codes."""
        if cmd.get("autocommit") is not False:
            return None
        session = self._session(cmd)
        assert session is not None  # (check_session_info: autocommit comes with an lsid and a txnNumber)
        number = int(cmd["txnNumber"])
        session.check_not_older(number, transaction=True)
        txn = session.txn
        if cmd.get("startTransaction"):
            if number == session.number:
                raise CommandError(117, "Only servers in a sharded cluster can start a new transaction at the active "
                                        "transaction number", code_name="ConflictingOperationInProgress")
            if txn is not None and txn.state == "open":
                self.store.abort(txn, self.locks)
            session.txn = Transaction(session.lsid, number)
            session.number = number
            session.txn_started = time.monotonic()
            return session.txn
        if txn is None or txn.number != number or number != session.number:
            raise CommandError(251, f"Given transaction number {number} does not match any in-progress "
                                    f"transactions. The active transaction number is {session.number}")
        name = next(iter(cmd))
        if txn.state == "aborted":
            raise CommandError(251, f"Transaction with {{ txnNumber: {number} }} has been aborted.")
        if txn.state == "committed" and name != "commitTransaction":
            raise CommandError(256, f"Transaction with {{ txnNumber: {number} }} has been committed.")
        return txn

    async def commit_transaction(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._require_transaction(cmd, "commitTransaction")
        txn = self._transaction(cmd)
        assert txn is not None
        if txn.state == "committed":
            return {}  # a retried commit
        self.store.commit(txn, self.locks)
        return {}

    async def abort_transaction(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self._require_transaction(cmd, "abortTransaction")
        txn = self._transaction(cmd)
        assert txn is not None
        self.store.abort(txn, self.locks)
        return {}

    @staticmethod
    def _require_transaction(cmd: dict[str, Any], name: str) -> None:
        """commitTransaction and abortTransaction run only inside a transaction (autocommit: false)."""
        if cmd.get("autocommit") is not False:  # (txn_cmds.cpp)
            raise CommandError(125, f"{name} must be run within a transaction", code_name="CommandFailed")
        if cmd.get("startTransaction"):
            raise CommandError(263, f"Cannot start a transaction with a {name} command")

    def _retryable_write(self, cmd: dict[str, Any]) -> tuple[Session | None, int | None]:
        """The session and txnNumber of a retryable write (a txnNumber without autocommit), or (None, None)."""
        session = self._session(cmd)
        if session is None or "txnNumber" not in cmd or cmd.get("autocommit") is False:
            return None, None
        number = int(cmd["txnNumber"])
        session.check_not_older(number, transaction=False)
        if number > session.number:
            session.number = number
            session.retried = {}
        return session, number

    async def end_sessions(self, cmd: dict[str, Any]) -> dict[str, Any]:
        for lsid in cmd.get("endSessions") or []:
            session = self.sessions.pop(_session_key(lsid), None)
            if session is not None and session.txn is not None:
                self.store.abort(session.txn, self.locks)
        return {}

    def reap_transactions(self) -> None:
        """Abort transactions open longer than the lifetime limit, as the server does."""
        now = time.monotonic()
        for session in self.sessions.values():
            txn = session.txn
            if txn is not None and txn.state == "open" and now - session.txn_started > TRANSACTION_LIFETIME:
                log.warning("aborting transaction %s: open longer than %ss", txn.number, TRANSACTION_LIFETIME)
                self.store.abort(txn, self.locks)

    def expire_documents(self) -> int:
        """One pass of the TTL monitor (:meth:`Store.expire`); how many documents it deleted."""
        return self.store.expire(self.locks)

    # -- writes -----------------------------------------------------------------------------------------
    async def _write_command(self, cmd: dict[str, Any], items_key: str,
                             one: Callable[[Any, Transaction | None], WriteResult | None]
                             ) -> dict[str, Any]:
        """Run the statements of insert/update/delete, with ordered semantics and retryable writes."""
        session, retry_number = self._retryable_write(cmd)
        if session is not None and retry_number in session.retried:
            return clone(session.retried[retry_number])
        txn = self._transaction(cmd)
        items = cmd[items_key]
        if not 0 < len(items) <= MAX_WRITE_BATCH:
            raise CommandError(16, f"Write batch sizes must be between 1 and {MAX_WRITE_BATCH}. "
                                   f"Got {len(items)} operations.")
        ordered = cmd.get("ordered", True) is not False
        reply: dict[str, Any] = {"n": 0}
        errors: list[dict[str, Any]] = []
        upserted: list[dict[str, Any]] = []
        modified = 0
        for index, item in enumerate(items):

            def statement(item: Any = item) -> WriteResult | None:
                return one(item, txn)

            try:
                result = await self._with_locks(statement)
            except CommandError as exc:
                if txn is not None:
                    self.store.abort(txn, self.locks)
                    if exc.code == 112:
                        raise
                error = {"index": index, "code": exc.code, "errmsg": exc.message, **exc.extra}
                errors.append(error)
                if ordered:
                    break
                continue
            if result is None:
                reply["n"] += 1
                continue
            if result.upserted is not None:
                upserted.append({"index": index, "_id": result.upserted})
                reply["n"] += 1
            else:
                reply["n"] += result.n
            modified += result.modified
        if items_key == "updates":
            reply["nModified"] = modified
            if upserted:
                reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        if retry_number is not None and session is not None:
            session.retried = {retry_number: clone(reply)}
        return reply

    async def _with_locks(self, fn: Callable[[], WriteResult | None]) -> WriteResult | None:
        while True:
            try:
                return fn()
            except Locked as locked:
                await locked.txn.ended.wait()

    async def insert(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "insert")

        validate.check_writable(db, coll)

        def one(doc: Any, txn: Transaction | None) -> None:
            if isinstance(doc, dict):
                validate.check_depth(doc)
            self.store.insert(db, coll, doc, txn, self.locks)

        return await self._write_command(cmd, "documents", one)

    async def update(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "update")
        validate.check_writable(db, coll)

        def one(stmt: Any, txn: Transaction | None) -> WriteResult:
            if not isinstance(stmt, dict) or "q" not in stmt or "u" not in stmt:
                raise CommandError(40414, "BSON field 'update.updates.q' and 'u' are required")
            self._check_hint(db, coll, stmt.get("hint"))
            validate.check_filter(stmt["q"])
            return self.store.update(db, coll, stmt["q"], stmt["u"], upsert=bool(stmt.get("upsert")),
                                     multi=bool(stmt.get("multi")), array_filters=stmt.get("arrayFilters"),
                                     txn=txn, locks=self.locks)

        return await self._write_command(cmd, "updates", one)

    async def delete(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "delete")
        validate.check_writable(db, coll)

        def one(stmt: Any, txn: Transaction | None) -> WriteResult:
            if not isinstance(stmt, dict) or "q" not in stmt or "limit" not in stmt:
                raise CommandError(40414, "BSON field 'delete.deletes.q' and 'limit' are required")
            self._check_hint(db, coll, stmt.get("hint"))
            validate.check_filter(stmt["q"])
            limit = int(stmt["limit"])
            if limit not in (0, 1):
                raise CommandError(9, "The limit field in delete objects must be 0 or 1.")
            return self.store.delete(db, coll, stmt["q"], limit=limit, txn=txn, locks=self.locks)

        return await self._write_command(cmd, "deletes", one)

    async def find_and_modify(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db = cmd["$db"]
        coll = _coll_arg(cmd, "findAndModify" if "findAndModify" in cmd else "findandmodify")
        validate.check_writable(db, coll)
        self._check_hint(db, coll, cmd.get("hint"))
        validate.check_filter(cmd.get("query"))
        validate.check_projection(cmd.get("fields"))
        session, retry_number = self._retryable_write(cmd)
        if session is not None and retry_number in session.retried:
            return clone(session.retried[retry_number])
        txn = self._transaction(cmd)
        query = cmd.get("query") or {}
        remove = bool(cmd.get("remove"))
        if remove == ("update" in cmd):
            raise CommandError(9, "Either an update or remove=true must be specified")
        if remove and cmd.get("upsert"):
            raise CommandError(9, "Cannot specify both an upsert and remove=true")
        if cmd.get("fields"):
            # A projection the stand-in cannot apply fails before the write, not after it (the write stayed, and
            # a transaction went on to commit it): tried on the document the query finds now.
            mc = self._mcoll(db, coll) if self.store.exists(db, coll) else None
            try:
                current = self.store._read(lambda: mc.find_one(query)) if mc is not None else None
                self._project(dict(current) if current is not None else {"_id": None}, cmd["fields"])
            except CommandError:
                if txn is not None:
                    self.store.abort(txn, self.locks)
                raise

        def one() -> WriteResult:
            if remove:
                return self.store.delete(db, coll, query, limit=1, txn=txn, locks=self.locks, sort=cmd.get("sort"))
            return self.store.update(db, coll, query, cmd["update"], upsert=bool(cmd.get("upsert")), multi=False,
                                     array_filters=cmd.get("arrayFilters"), txn=txn, locks=self.locks,
                                     sort=cmd.get("sort"))

        try:
            result = await self._with_locks(one)
        except CommandError:
            if txn is not None:
                self.store.abort(txn, self.locks)
            raise
        assert result is not None
        value = result.after if cmd.get("new") and not remove else result.before
        if result.upserted is not None and not cmd.get("new"):
            value = None
        if value is not None and cmd.get("fields"):
            value = self._project(value, cmd["fields"])
        last: dict[str, Any] = {"n": 1 if result.n or result.upserted is not None else 0}
        if not remove:
            last["updatedExisting"] = bool(result.n)
            if result.upserted is not None:
                last["upserted"] = result.upserted
        reply = {"lastErrorObject": last, "value": value}
        if retry_number is not None and session is not None:
            session.retried = {retry_number: clone(reply)}
        return reply

    def _check_hint(self, db: str, coll: str, hint: Any) -> None:
        """A hint names an index by its name or key pattern; one that names none fails, as on the server. A hint
        changes no result unless it names a sparse or partial index, which the stand-in does not honour."""
        if hint is None or hint == {} or not self.store.exists(db, coll):
            return
        indexes: dict[str, dict[str, Any]] = {"_id_": {"key": [("_id", 1)]}, **self._mcoll(db, coll)._store.indexes}
        if isinstance(hint, dict):
            key = [(path, int(d) if isinstance(d, (int, float)) else d) for path, d in hint.items()]
            found = next((index for index in indexes.values() if list(index["key"]) == key), None)
        else:
            found = indexes.get(hint)
        if found is None:
            raise CommandError(2, "error processing query: planner returned error :: caused by :: hint provided does "
                                  "not correspond to an existing index")
        if found.get("sparse") or found.get("partialFilterExpression") is not None:
            raise unsupported("a hint naming a sparse or partial index")

    def _project(self, doc: dict[str, Any], projection: dict[str, Any]) -> dict[str, Any]:
        with self.store.scratch() as scratch:
            scratch.insert_one(clone(doc))
            found = self.store._read(lambda: scratch.find_one({}, projection))
            return dict(found) if found is not None else {}

    # -- reads ------------------------------------------------------------------------------------------
    def _new_cursor(self, ns: str, docs: list[dict[str, Any]], first: int | None,
                    single_batch: bool = False, read_at: Timestamp | None = None,
                    time_limit: Deadline | None = None) -> dict[str, Any]:
        cursor = ListCursor(next(self._cursor_ids), ns, docs)
        batch = cursor.take(DEFAULT_BATCH if first is None else first)
        if time_limit is not None:
            time_limit.check()
            cursor.time_left = time_limit.left()
        cursor_id = 0
        if not cursor.exhausted and not single_batch:
            cursor_id = cursor.id
            self.cursors[cursor_id] = cursor
        reply: dict[str, Any] = {"firstBatch": batch, "id": Int64(cursor_id), "ns": ns}
        if read_at is not None:
            reply["atClusterTime"] = read_at
        return {"cursor": reply}

    def _mcoll(self, db: str, coll: str) -> Any:
        return self.store._mcoll(db, coll)

    @contextlib.contextmanager
    def _source(self, cmd: dict[str, Any], db: str, coll: str,
                query: Any = None) -> Iterator[tuple[Any, Timestamp | None]]:
        """The collection a read runs on, and the cluster time a snapshot read (outside a transaction) read at.

        The collection is the live one, or (at ``readConcern.atClusterTime``, or while other transactions have
        uncommitted writes in it) a scratch copy of what the read may see, holding only the documents that match
        ``query``; None when the collection does not exist for this read. A read may open a transaction
        (``startTransaction``), as any command of one may. A snapshot read without ``atClusterTime`` reads at the
        latest time, and says which (``atClusterTime`` in its reply), so that a snapshot session pins it."""
        own = self._transaction(cmd)
        concern = cmd.get("readConcern") or {}
        at = concern.get("atClusterTime") if isinstance(concern, dict) else None
        if at is not None:
            if concern.get("level") != "snapshot":
                raise CommandError(2, "atClusterTime is only allowed with readConcern level 'snapshot'")
            if not isinstance(at, Timestamp):
                raise CommandError(14, "atClusterTime must be a Timestamp")
        read_at = at if at is not None else (
            self.oplog.latest_ts if own is None and concern.get("level") == "snapshot" else None)
        hide = [t for t in {id(t): t for t in self.locks.values()}.values()
                if t is not own and t.state == "open" and any(u[:2] == (db, coll) for u in t.undo)]
        if not self.store.visible(db, coll, own) and at is None:
            yield None, read_at
        elif at is None and not hide:
            yield self._mcoll(db, coll), read_at
        else:
            docs = self.store.snapshot(db, coll, at, hide, query)
            with self.store.scratch() as scratch:
                if docs:
                    scratch.insert_many(docs)
                yield scratch, read_at

    def _own_transaction(self, cmd: dict[str, Any]) -> Transaction | None:
        if cmd.get("autocommit") is not False or cmd.get("lsid") is None:
            return None
        session = self.sessions.get(_session_key(cmd["lsid"]))
        return session.txn if session is not None else None

    async def find(self, cmd: dict[str, Any]) -> dict[str, Any]:
        time_limit = Deadline.of(cmd.get("maxTimeMS"))
        db, coll = cmd["$db"], _coll_arg(cmd, "find")
        self._check_hint(db, coll, cmd.get("hint"))
        validate.check_filter(cmd.get("filter"))
        validate.check_projection(cmd.get("projection"))
        filter_ = cmd.get("filter") or {}
        docs: list[dict[str, Any]] = []
        if (db, coll) == ("local", "system.replset"):  # what rs.conf() reads where replSetGetConfig is not used
            return self._new_cursor("local.system.replset", [self.replica_set_config()], cmd.get("batchSize"))
        with self._source(cmd, db, coll, filter_) as (mc, read_at):
            if mc is not None:
                cursor = self.store._read(lambda: mc.find(filter_, cmd.get("projection") or None))
                if cmd.get("sort"):
                    cursor = cursor.sort(sort_list(cmd["sort"]))
                if cmd.get("skip"):
                    cursor = cursor.skip(int(cmd["skip"]))
                limit = int(cmd.get("limit") or 0)
                if limit:
                    cursor = cursor.limit(abs(limit))
                docs = [dict(d) for d in self.store._read(lambda: materialize(cursor))]
        return self._new_cursor(f"{db}.{coll}", docs, cmd.get("batchSize"), bool(cmd.get("singleBatch")), read_at,
                                time_limit)

    async def count(self, cmd: dict[str, Any]) -> dict[str, Any]:
        time_limit = Deadline.of(cmd.get("maxTimeMS"))
        db, coll = cmd["$db"], _coll_arg(cmd, "count")
        self._check_hint(db, coll, cmd.get("hint"))
        validate.check_filter(cmd.get("query"))
        with self._source(cmd, db, coll, cmd.get("query")) as (mc, _):
            if mc is None:
                return {"n": 0}
            n = self.store._read(lambda: mc.count_documents(cmd.get("query") or {}))
        n = max(n - int(cmd.get("skip") or 0), 0)
        if cmd.get("limit"):
            n = min(n, abs(int(cmd["limit"])))
        time_limit.check()
        return {"n": n}

    async def distinct(self, cmd: dict[str, Any]) -> dict[str, Any]:
        time_limit = Deadline.of(cmd.get("maxTimeMS"))
        db, coll = cmd["$db"], _coll_arg(cmd, "distinct")
        validate.check_filter(cmd.get("query"))
        key = cmd.get("key")
        if not isinstance(key, str):
            raise CommandError(14, "BSON field 'distinct.key' is missing or is not a string")
        with self._source(cmd, db, coll, cmd.get("query")) as (mc, read_at):
            values = [] if mc is None else self.store._read(lambda: list(mc.distinct(key, cmd.get("query") or {})))
        reply: dict[str, Any] = {"values": sort_values(values)}
        time_limit.check()
        if read_at is not None:
            reply["atClusterTime"] = read_at
        return reply

    async def aggregate(self, cmd: dict[str, Any]) -> dict[str, Any]:
        time_limit = Deadline.of(cmd.get("maxTimeMS"))
        db, coll = cmd["$db"], _collection_or_1(cmd, "aggregate")
        pipeline: list[dict[str, Any]] = cmd["pipeline"]
        for stage in pipeline:
            if len(stage) != 1:
                raise CommandError(40323, "A pipeline stage specification object must contain exactly one field.")
        if "cursor" not in cmd and not cmd.get("explain"):
            raise CommandError(9, "The 'cursor' option is required, except for aggregate with the explain argument")
        if _is_change_stream(cmd):
            return await self._open_change_stream(cmd, coll)
        if coll is None:
            raise unsupported("a database-level aggregate other than $changeStream")
        for stage in pipeline:
            name = next(iter(stage))
            if name not in validate.PIPELINE_STAGES:
                raise CommandError(40324, f"Unrecognized pipeline stage name: '{name}'")
            if name in ("$out", "$merge", "$changeStream", "$lookup", "$graphLookup", "$unionWith"):
                raise unsupported(f"the aggregation stage {name}")
            validate.check_stage(name, stage[name])
            if name == "$match":
                validate.check_filter(stage[name])
        self._check_hint(db, coll, cmd.get("hint"))
        if cmd.get("explain"):
            inner = {k: v for k, v in cmd.items() if k not in ("explain", "$db", "cursor")}
            return await self.explain({"explain": inner, "verbosity": "queryPlanner", "$db": db})
        if pipeline and next(iter(pipeline[0])) == "$collStats":
            stats = self._coll_stats_stage(db, coll, pipeline[0]["$collStats"])
            return self._new_cursor(f"{db}.{coll}", aggregate_docs(stats, pipeline[1:]),
                                    cmd.get("cursor", {}).get("batchSize"), time_limit=time_limit)
        docs: list[dict[str, Any]] = []
        first = pipeline[0] if pipeline else {}
        with self._source(cmd, db, coll, first.get("$match") if list(first) == ["$match"] else None) as (mc, read_at):
            if mc is not None:
                docs = [_id_first(dict(d)) for d in self.store._read(lambda: aggregate(mc, pipeline))]
        return self._new_cursor(f"{db}.{coll}", docs, cmd.get("cursor", {}).get("batchSize"), read_at=read_at,
                                time_limit=time_limit)

    async def _open_change_stream(self, cmd: dict[str, Any], coll: str | None) -> dict[str, Any]:
        if cmd.get("autocommit") is False:
            raise CommandError(263, "Cannot run aggregate with $changeStream in a multi-document transaction.")
        cursor = changestream.open_cursor(next(self._cursor_ids), cmd, coll, self.oplog)
        batch, filled = changestream.scan(cursor, self.oplog, self.store, cmd.get("cursor", {}).get("batchSize"))
        pbrt = changestream.post_batch_resume_token(cursor, self.oplog, batch, filled)
        cursor_id = 0 if cursor.closed else cursor.id
        if not cursor.closed:
            self.cursors[cursor.id] = cursor
        return {"cursor": {"firstBatch": batch, "postBatchResumeToken": pbrt, "id": Int64(cursor_id),
                           "ns": cursor.ns}}

    async def get_more(self, cmd: dict[str, Any]) -> dict[str, Any]:
        cursor_id = int(cmd.get("getMore", 0))
        cursor = self.cursors.get(cursor_id)
        if cursor is None:
            raise CommandError(43, f"cursor id {cursor_id} not found")
        ns = f"{cmd['$db']}.{cmd.get('collection')}"
        if ns != cursor.ns:
            raise CommandError(13, f"Requested getMore on namespace '{ns}', but cursor belongs to a "
                                   f"different namespace {cursor.ns}", code_name="Unauthorized")
        action = self.failpoints.check("getMore", None, FAIL_GET_MORE)
        if action is not None and action.error is not None:
            # Failed once the cursor is found: the error gets the labels of a real error on that cursor.
            error = action.error
            error.labels = error_labels("getMore", cmd, error.code, None, isinstance(cursor, ChangeStreamCursor))
            raise error
        if isinstance(cursor, ListCursor):
            if "maxTimeMS" in cmd:  # its limit is its command's (getmore_cmd.cpp)
                raise CommandError(2, "cannot set maxTimeMS on getMore command for a non-awaitData cursor")
            time_limit = Deadline.after(cursor.time_left)
            try:
                if time_limit.limited and self.failpoints.time_out():
                    raise exceeded()
                batch = cursor.take(cmd.get("batchSize") or None)
                time_limit.check()
            except CommandError:
                del self.cursors[cursor_id]  # an error ends a cursor, as on the server
                raise
            cursor.time_left = time_limit.left()
            if cursor.exhausted:
                del self.cursors[cursor_id]
            return {"cursor": {"nextBatch": batch, "id": Int64(0 if cursor.exhausted else cursor_id),
                               "ns": cursor.ns}}
        return await self._change_stream_more(cursor, cmd)

    async def _change_stream_more(self, cursor: ChangeStreamCursor, cmd: dict[str, Any]) -> dict[str, Any]:
        batch_size = cmd.get("batchSize") or None  # 0: no limit
        max_time = float(cmd.get("maxTimeMS", 1000)) / 1000
        deadline = asyncio.get_running_loop().time() + max_time
        try:
            while True:
                batch, filled = changestream.scan(cursor, self.oplog, self.store,
                                                  None if batch_size is None else int(batch_size))
                remaining = deadline - asyncio.get_running_loop().time()
                if batch or cursor.closed or remaining <= 0 or cursor.id not in self.cursors:
                    break
                await self.oplog.wait(remaining)
        except CommandError:
            self.cursors.pop(cursor.id, None)
            raise
        if cursor.id not in self.cursors:  # killed while waiting
            raise CommandError(43, f"cursor id {cursor.id} not found")
        pbrt = changestream.post_batch_resume_token(cursor, self.oplog, batch, filled)
        if cursor.closed:
            self.cursors.pop(cursor.id, None)
        return {"cursor": {"nextBatch": batch, "postBatchResumeToken": pbrt,
                           "id": Int64(0 if cursor.closed else cursor.id), "ns": cursor.ns}}

    async def kill_cursors(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if arguments.bson_type(cmd["killCursors"]) != "string":  # a collection, or $cmd.aggregate for a db stream
            raise CommandError(2, f"collection name has invalid type {arguments.bson_type(cmd['killCursors'])}")
        killed, missing = [], []
        for cursor_id in cmd["cursors"]:
            if self.cursors.pop(cursor_id, None) is not None:
                killed.append(Int64(cursor_id))
            else:
                missing.append(Int64(cursor_id))
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [], "cursorsUnknown": []}

    # -- collections, databases, indexes -----------------------------------------------------------------
    async def create(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "create")
        options = {k: v for k, v in cmd.items() if k not in _GENERIC_FIELDS and k != "create"}
        self.store.create(db, coll, options, self._transaction(cmd))
        return {}

    async def coll_mod(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "collMod")
        options = {k: v for k, v in cmd.items() if k not in _GENERIC_FIELDS and k != "collMod"}
        self.store.coll_mod(db, coll, options)
        self.store.record_ddl("modify", db, coll, options)
        return {}

    async def drop(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "drop")
        if cmd.get("autocommit") is False:
            raise CommandError(263, "Cannot run 'drop' in a multi-document transaction.")
        existed = self.store.drop(db, coll)
        return {"ns": f"{db}.{coll}", "nIndexesWas": 1} if existed else {}

    async def drop_database(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db = cmd["$db"]
        if db in ("admin", "local", "config"):
            raise CommandError(20, f"Dropping the '{db}' database is prohibited.")
        self.store.drop_database(db)
        return {"dropped": db}

    async def rename_collection(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["$db"] != "admin":
            raise CommandError(13, "renameCollection may only be run against the admin database.",
                               code_name="Unauthorized")
        source, target = str(cmd.get("renameCollection", "")), str(cmd.get("to", ""))
        sdb, _, scoll = source.partition(".")
        tdb, _, tcoll = target.partition(".")
        if not scoll or not tcoll:
            raise CommandError(73, f"Invalid namespace specified '{source if not scoll else target}'")
        if sdb != tdb:
            raise unsupported("renameCollection across databases")
        self.store.rename(sdb, scoll, tcoll, bool(cmd.get("dropTarget")))
        return {}

    async def list_collections(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db = cmd["$db"]
        filter_ = cmd.get("filter") or {}
        out = []
        own = self._transaction(cmd)
        for name in self.store.collection_names(db):
            if not self.store.visible(db, name, own):
                continue
            meta = self.store.info(db, name)
            entry = {"name": name, "type": "collection", "options": clone(meta.options),
                     "info": {"readOnly": False, "uuid": meta.uuid},
                     "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
            import mongomock.filtering

            if filter_ and not self.store._read(lambda entry=entry: mongomock.filtering.filter_applies(filter_, entry)):
                continue
            out.append({"name": name, "type": "collection"} if cmd.get("nameOnly") else entry)
        batch = (cmd.get("cursor") or {}).get("batchSize")
        return self._new_cursor(f"{db}.$cmd.listCollections", out, None if batch is None else int(batch))

    async def list_databases(self, cmd: dict[str, Any]) -> dict[str, Any]:
        names = self.store.databases()
        if cmd.get("nameOnly"):
            return {"databases": [{"name": n} for n in names]}
        dbs = [{"name": n, "sizeOnDisk": Int64(4096), "empty": False} for n in names]
        return {"databases": dbs, "totalSize": Int64(4096 * len(dbs)), "totalSizeMb": Int64(0)}

    async def create_indexes(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "createIndexes")
        specs = cmd.get("indexes")
        if not isinstance(specs, list) or not specs:
            raise CommandError(2, "Must specify at least one index to create")
        txn = self._transaction(cmd)
        if txn is not None and self.store.exists(db, coll) and self.store.info(db, coll).txn is not txn:
            raise CommandError(263, f"Cannot create new indexes on existing collection {db}.{coll} in a "
                                    "multi-document transaction.")
        created = not self.store.exists(db, coll)
        while True:
            try:
                self.store.ensure(db, coll, txn)
                break
            except Locked as locked:  # created by a transaction still open: wait for it to end
                await locked.txn.ended.wait()
        mc = self._mcoll(db, coll)
        before = len(mc._store.indexes) + 1
        for spec in specs:
            if not spec["name"]:
                raise CommandError(67, "Index name cannot be empty.", code_name="CannotCreateIndex")
            if not spec["key"]:
                raise CommandError(67, "Index keys cannot be empty.", code_name="CannotCreateIndex")
            allowed = {"key", "name", "unique", "sparse", "partialFilterExpression", "expireAfterSeconds",
                       "background", "v"}
            for opt in spec:
                if opt not in allowed:
                    raise unsupported(f"the index option '{opt}'")
            for direction in spec["key"].values():
                if direction not in (1, -1):
                    raise unsupported(f"the index type {direction!r}")
            # The index as mongomock keeps it, made here: mongomock's create_index checks uniqueness over
            # the documents without the partial filter, and warns on Python 3.12 and later while doing so.
            name = spec["name"]
            index: dict[str, Any] = {"key": [(k, int(v)) for k, v in spec["key"].items()]}
            for opt in ("sparse", "unique"):
                if spec.get(opt):
                    index[opt] = True
            for opt in ("expireAfterSeconds", "partialFilterExpression"):
                if spec.get(opt) is not None:
                    index[opt] = spec[opt]
            existing = mc._store.indexes.get(name)
            if existing is not None:
                if existing == index:
                    continue  # the same index again: nothing to do, as on the server
                code = 85 if existing["key"] == index["key"] else 86  # IndexOptionsConflict, IndexKeySpecsConflict
                raise CommandError(code, f"An existing index has the same name as the requested index. "
                                         f"Requested index: {spec}, existing index: {existing}")
            if index.get("unique"):
                dup = self.store._read(functools.partial(
                    first_duplicate, mc._store.documents, list(spec["key"]), sparse=bool(index.get("sparse")),
                    partial=index.get("partialFilterExpression")))
                if dup is not None:
                    shown = ", ".join(f"{p}: {v!r}" for p, v in dup.items())
                    raise CommandError(11000, f"Index build failed: E11000 duplicate key error collection: "
                                              f"{db}.{coll} index: {name} dup key: {{ {shown} }}")
            mc._store.create_index(name, index)
            self.store.record_ddl("createIndexes", db, coll, {"indexes": [{"v": 2, **_index_entry(name, index)}]})
        return {"numIndexesBefore": before, "numIndexesAfter": len(mc._store.indexes) + 1,
                "createdCollectionAutomatically": created}

    async def list_indexes(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "listIndexes")
        if not self.store.visible(db, coll, self._transaction(cmd)):
            raise CommandError(26, f"ns does not exist: {db}.{coll}")
        out: list[dict[str, Any]] = [{"v": 2, "key": {"_id": 1}, "name": "_id_"}]
        for name, index in self._mcoll(db, coll)._store.indexes.items():
            entry: dict[str, Any] = {"v": 2, "key": dict(index["key"]), "name": name}
            for opt in ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds"):
                if opt in index:
                    entry[opt] = index[opt]
            out.append(entry)
        return self._new_cursor(f"{db}.{coll}", out, None)

    async def drop_indexes(self, cmd: dict[str, Any]) -> dict[str, Any]:
        db, coll = cmd["$db"], _coll_arg(cmd, "dropIndexes")
        if not self.store.exists(db, coll):
            raise CommandError(26, f"ns not found {db}.{coll}")
        store = self._mcoll(db, coll)._store
        which = cmd["index"]
        if isinstance(which, dict):  # a key pattern
            key = [(path, direction) for path, direction in which.items()]
            names = [name for name, index in store.indexes.items() if index["key"] == key]
            if not names:
                raise CommandError(27, f"can't find index with key: {limits.show(which)}", code_name="IndexNotFound")
        else:
            names = which if isinstance(which, list) else [which]
        if names == ["*"]:
            names = list(store.indexes)
        for name in names:
            if name == "_id_":
                raise CommandError(72, "cannot drop _id index")
            if name not in store.indexes:
                raise CommandError(27, f"index not found with name [{name}]", code_name="IndexNotFound")
        for name in names:
            entry = {"v": 2, **_index_entry(name, store.indexes[name])}
            store.drop_index(name)
            self.store.record_ddl("dropIndexes", db, coll, {"indexes": [entry]})
        return {"nIndexesWas": len(store.indexes) + 1 + len(names)}

    # -- test control ------------------------------------------------------------------------------------
    async def configure_fail_point(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["$db"] != "admin":
            raise CommandError(13, "configureFailPoint may only be run against the admin database.",
                               code_name="Unauthorized")
        self.failpoints.configure(cmd)
        return {}

    async def control(self, cmd: dict[str, Any]) -> dict[str, Any]:
        """``{realtimeStandIn: <action>, ...}``: what tests in another process use to inject faults."""
        action = cmd.get("realtimeStandIn")
        if action == "truncateOplog":
            self.oplog.truncate(int(cmd.get("keepLast", 0)))
        elif action == "pause":
            self.paused_until = time.monotonic() + float(cmd.get("seconds", 1.0))
        elif action == "hangUp":
            self.hang_up_all()
        elif action != "status":
            raise bad_value(f"unknown realtimeStandIn action {action!r}: use truncateOplog, pause, hangUp or status")
        return {"oplog": {"entries": len(self.oplog), "bytes": self.oplog.size_bytes,
                          "maxEntries": self.oplog.max_entries, "maxBytes": self.oplog.max_bytes,
                          "oldest": self.oplog.oldest_ts, "latest": self.oplog.latest_ts}}


# The commands whose maxTimeMS bounds their work (and that maxTimeAlwaysTimeOut therefore fails): those that read
# or write data. A getMore spends what its cursor has left (ListCursor.time_left).
TIMED_COMMANDS = frozenset({
    "find", "aggregate", "count", "distinct", "insert", "update", "delete", "findAndModify", "findandmodify",
    "create", "drop", "dropDatabase", "collMod", "renameCollection", "listCollections", "listDatabases",
    "createIndexes", "listIndexes", "dropIndexes", "dbStats", "collStats", "explain",
})

# The commands that take a writeConcern, and answer writeConcernError when it cannot be satisfied.
WRITE_CONCERN_COMMANDS = frozenset({
    "insert", "update", "delete", "findAndModify", "findandmodify", "create", "drop", "dropDatabase", "collMod",
    "renameCollection", "createIndexes", "dropIndexes", "commitTransaction", "abortTransaction",
})

_GENERIC_FIELDS = idl.GENERIC_ARGUMENTS


def _is_change_stream(cmd: dict[str, Any]) -> bool:
    pipeline = cmd.get("pipeline")
    return (isinstance(pipeline, list) and bool(pipeline) and isinstance(pipeline[0], dict)
            and "$changeStream" in pipeline[0])


def _index_entry(name: str, index: dict[str, Any]) -> dict[str, Any]:
    """An index as listIndexes shows it (without its version)."""
    entry: dict[str, Any] = {"key": dict(index["key"]), "name": name}
    for opt in ("unique", "sparse", "partialFilterExpression", "expireAfterSeconds"):
        if opt in index:
            entry[opt] = index[opt]
    return entry


def _id_first(doc: dict[str, Any]) -> dict[str, Any]:
    if "_id" in doc and next(iter(doc)) != "_id":
        return {"_id": doc["_id"], **{k: v for k, v in doc.items() if k != "_id"}}
    return doc


_ = Timestamp  # re-exported type used in replies
