"""What each command accepts, field by field, as MongoDB 7.0's IDL declares it; and the parse of a command by it.

MongoDB parses most commands with parsers generated from IDL files (mongodb/mongo, ``src/mongo/**/*.idl``). A
*strict* one refuses a field it does not declare, unless the field is a generic argument every command takes
(src/mongo/idl/generic_argument.idl): ``{find: "c", foo: 1}`` is 40415, "BSON field 'find.foo' is an unknown
field." So is the stand-in: each strict command below lists every field its IDL declares, with the BSON types the
server accepts there (a wrong one is TypeMismatch, 14). Of those fields:

- the ones the stand-in reads are checked and normalised for its handlers (:mod:`arguments`);
- the ones that change nothing in a one-member replica set without validators, sharding or encryption
  (``allowDiskUse``, ``noCursorTimeout``, ``bypassDocumentValidation``, ``stmtId``, ``mirrored``, ...) are only
  type-checked;
- the ones that would change the result and that the stand-in does not implement (``returnKey``,
  ``collectionUUID``, ``encryptionInformation``, ``runtimeConstants``, ...) are refused as not supported whenever
  they ask for something, never ignored.

Commands that MongoDB does not parse strictly (``ping``, ``buildInfo``, ``serverStatus``, ``killSessions``,
``explain``, ``configureFailPoint``, ...) stay lenient here: other fields are ignored, as the server ignores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from realtime.standin.arguments import (
    ALL_TYPES,
    AN_UUID,
    BOOL,
    BOOLISH,
    COLLATION,
    CURSOR,
    DELETE_LIMIT,
    HINT,
    IMAGES,
    INT,
    LET,
    LONG,
    MAX_TIME_MS,
    NON_NEGATIVE,
    NUMBER,
    OBJECT,
    OBJECTS,
    READ_CONCERN,
    SAFE_BOOL,
    SECONDS,
    STRING,
    STRINGS,
    UPDATE,
    UUID,
    WRITE_CONCERN,
    Arg,
    bson_type,
    parse_object,
    refuse,
    refused,
    required,
    wrong_type,
)
from realtime.standin.errors import CommandError

# The generic arguments (src/mongo/idl/generic_argument.idl, generic_args_api_v1 and generic_args_unstable_v1):
# accepted by every command, strict or not. Those the stand-in does not read change nothing here.
GENERIC_ARGUMENTS = frozenset({
    "apiVersion", "apiStrict", "apiDeprecationErrors", "$db", "maxTimeMS", "readConcern", "writeConcern", "lsid",
    "clientOperationKey", "txnNumber", "autocommit", "startTransaction", "stmtId", "comment", "$readPreference",
    "$clusterTime",
    "$audit", "$client", "$configServerState", "allowImplicitCollectionCreation", "$oplogQueryData",
    "$queryOptions", "$replData", "databaseVersion", "shardVersion", "tracking_info", "coordinator",
    "maxTimeMSOpOnly", "$configTime", "$topologyTime", "txnRetryCounter", "mayBypassWriteBlocking", "$tenant",
    "expectPrefix",
})

# The generic arguments the stand-in reads. The session's are parsed as the server's OperationSessionInfo
# (src/mongo/db/session/logical_session_id.idl).
SESSION: Mapping[str, Arg] = {
    "lsid": Arg(("object",), fields={"id": UUID, "uid": Arg(("binData",))}),
    "txnNumber": LONG,
    "autocommit": BOOL,
    "startTransaction": BOOL,
}
GENERIC: Mapping[str, Arg] = {
    "readConcern": READ_CONCERN,
    "writeConcern": WRITE_CONCERN,
    "$readPreference": OBJECT,
    "maxTimeMS": MAX_TIME_MS,
}


@dataclass(frozen=True)
class Command:
    """A command's fields besides the generic arguments; ``strict``: any other field is 40415."""

    fields: Mapping[str, Arg]
    strict: bool = True
    name: str = ""  # the name its IDL parser gives it in messages, when an alias was sent


# Field kinds of the IDL's basic types (src/mongo/idl/basic_types.idl), for the fields only type-checked.
ANY_BOOL = Arg(BOOLISH)  # safeBool, optionalBool
ANY_INT = Arg(NUMBER)  # safeInt, safeInt64
INT32 = Arg(("int",))  # int
INT32S = Arg(("array",), items=INT32)  # array<int>
TIMESTAMP = Arg(("timestamp",))
NOT_SUPPORTED = refuse(Arg(("object",)))  # a structure the stand-in does not implement (runtimeConstants, ...)
NOT_SUPPORTED_UUID = refuse(AN_UUID)  # collectionUUID: the expected UUID of the collection
IGNORED = Arg(ALL_TYPES)  # a field the IDL declares with "ignore: true": taken whatever its type, and unread


def _bool_not_uuid(path: str, value: Any) -> None:
    """renameCollection's dropTarget: true or false; a UUID (the target's expected UUID) is not supported."""
    if not isinstance(value, bool):
        refused(path, value)

# The fields of every write command (write_ops.idl, WriteCommandRequestBase).
_WRITE_BASE: Mapping[str, Arg] = {
    "bypassDocumentValidation": SAFE_BOOL, "ordered": BOOL, "stmtId": INT32, "stmtIds": INT32S,
    "isTimeseriesNamespace": ANY_BOOL, "collectionUUID": NOT_SUPPORTED_UUID, "encryptionInformation": NOT_SUPPORTED,
}
# src/mongo/db/repl/hello.idl. Not strict: a driver's handshake goes before it knows the server's version, and
# carries fields newer servers read (PyMongo 4.20 sends backpressure: "2"), which a 7.0 server ignores.
_HELLO = Command({
    "forShell": ANY_BOOL, "hostInfo": STRING, "hangUpOnStepDown": ANY_BOOL, "internalClient": OBJECT,
    "client": Arg(("object",), fields={"application": Arg(("object",), fields={"name": STRING})}),
    "topologyVersion": OBJECT, "maxAwaitTimeMS": NON_NEGATIVE, "helloOk": SAFE_BOOL, "compression": STRINGS,
    "saslSupportedMechs": STRING, "speculativeAuthenticate": OBJECT, "loadBalanced": ANY_BOOL,
}, strict=False, name="hello")
_FIND_AND_MODIFY = Command({  # src/mongo/db/ops/write_ops.idl, findAndModify
    "query": OBJECT, "fields": OBJECT, "sort": OBJECT, "batchSize": INT32, "singleBatch": BOOL, "hint": HINT,
    "collation": COLLATION, "arrayFilters": OBJECTS, "remove": SAFE_BOOL, "update": UPDATE, "upsert": SAFE_BOOL,
    "new": SAFE_BOOL, "stmtId": INT32, "bypassDocumentValidation": SAFE_BOOL, "let": LET,
    "runtimeConstants": NOT_SUPPORTED, "encryptionInformation": NOT_SUPPORTED, "mirrored": ANY_BOOL,
    "sampleId": AN_UUID, "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery": ANY_BOOL,
}, name="findAndModify")
_COLLECTION_OPTIONS: Mapping[str, Arg] = {
    "changeStreamPreAndPostImages": IMAGES, "validator": OBJECT, "validationLevel": STRING,
    "validationAction": STRING, "viewOn": STRING, "pipeline": OBJECTS, "expireAfterSeconds": INT,
    "timeseries": OBJECT, "recordPreImages": SAFE_BOOL,
}

COMMANDS: Mapping[str, Command] = {
    "hello": _HELLO, "isMaster": _HELLO, "ismaster": _HELLO,
    # src/mongo/db/commands/sessions_commands.idl: the command's own field, nothing else
    "endSessions": Command({"endSessions": Arg(("array",), required=True,
                                               items=Arg(("object",), fields={"id": UUID}))}),
    # src/mongo/db/query/kill_cursors.idl
    "killCursors": Command({"cursors": Arg(("array",), required=True, items=LONG)}),
    # src/mongo/db/query/getmore_command.idl
    "getMore": Command({"getMore": required(LONG), "collection": required(STRING), "batchSize": NON_NEGATIVE,
                        "term": LONG, "lastKnownCommittedOpTime": OBJECT}),
    # src/mongo/db/ops/write_ops.idl: insert, update (UpdateOpEntry), delete (DeleteOpEntry), findAndModify
    "insert": Command({**_WRITE_BASE, "documents": required(OBJECTS)}),
    "update": Command({
        **_WRITE_BASE,
        "updates": Arg(("array",), required=True, items=Arg(("object",), strict=True, fields={
            "q": required(OBJECT), "u": required(UPDATE), "c": refuse(OBJECT), "arrayFilters": OBJECTS,
            "hint": HINT, "multi": BOOL, "upsert": BOOL, "upsertSupplied": refuse(ANY_BOOL),
            "collation": COLLATION, "sampleId": AN_UUID,
            "$_allowShardKeyUpdatesWithoutFullShardKeyInQuery": ANY_BOOL})),
        "let": LET, "runtimeConstants": NOT_SUPPORTED, "mirrored": ANY_BOOL}),
    "delete": Command({
        **_WRITE_BASE,
        "deletes": Arg(("array",), required=True, items=Arg(("object",), strict=True, fields={
            "q": required(OBJECT), "limit": DELETE_LIMIT, "hint": HINT, "collation": COLLATION,
            "sampleId": AN_UUID})),
        "let": LET, "runtimeConstants": NOT_SUPPORTED}),
    "findAndModify": _FIND_AND_MODIFY, "findandmodify": _FIND_AND_MODIFY,
    # src/mongo/db/query/find_command.idl
    "find": Command({
        "filter": OBJECT, "projection": OBJECT, "sort": OBJECT, "hint": HINT, "collation": COLLATION,
        "skip": NON_NEGATIVE, "limit": NON_NEGATIVE, "batchSize": NON_NEGATIVE, "singleBatch": SAFE_BOOL,
        "allowDiskUse": SAFE_BOOL, "min": refuse(OBJECT), "max": refuse(OBJECT), "returnKey": refuse(ANY_BOOL),
        "showRecordId": refuse(ANY_BOOL), "tailable": refuse(ANY_BOOL), "oplogReplay": ANY_BOOL,
        "noCursorTimeout": SAFE_BOOL, "awaitData": refuse(ANY_BOOL), "allowPartialResults": SAFE_BOOL,
        "let": LET, "term": ANY_INT, "readOnce": ANY_BOOL, "allowSpeculativeMajorityRead": ANY_BOOL,
        "$_requestResumeToken": refuse(ANY_BOOL), "$_resumeAfter": NOT_SUPPORTED,
        "runtimeConstants": NOT_SUPPORTED, "collectionUUID": NOT_SUPPORTED_UUID,
        "encryptionInformation": NOT_SUPPORTED, "mirrored": ANY_BOOL}),
    # src/mongo/db/query/count_command.idl ("fields" is accepted and ignored, as the server ignores it)
    "count": Command({"query": OBJECT, "limit": INT, "skip": NON_NEGATIVE, "hint": HINT, "collation": COLLATION,
                      "fields": IGNORED, "encryptionInformation": NOT_SUPPORTED, "sampleId": AN_UUID}),
    # src/mongo/db/query/distinct_command.idl
    "distinct": Command({"key": required(STRING), "query": OBJECT, "collation": COLLATION, "mirrored": ANY_BOOL,
                         "sampleId": AN_UUID}),
    # src/mongo/db/pipeline/aggregate_command.idl
    "aggregate": Command({
        "pipeline": Arg(("array",), required=True, items=OBJECT), "explain": BOOL, "allowDiskUse": BOOL,
        "cursor": CURSOR, "bypassDocumentValidation": SAFE_BOOL, "collation": COLLATION, "hint": HINT,
        "let": LET, "needsMerge": refuse(ANY_BOOL), "fromMongos": ANY_BOOL,
        "$_requestReshardingResumeToken": refuse(ANY_BOOL), "exchange": NOT_SUPPORTED,
        "runtimeConstants": NOT_SUPPORTED, "isMapReduceCommand": ANY_BOOL, "collectionUUID": NOT_SUPPORTED_UUID,
        "$_passthroughToShard": NOT_SUPPORTED, "encryptionInformation": NOT_SUPPORTED,
        "$_externalDataSources": refuse(Arg(("array",))), "sampleId": AN_UUID, "stmtId": INT32,
        "$_isClusterQueryWithoutShardKeyCmd": ANY_BOOL, "$_generateV2ResumeTokens": refuse(ANY_BOOL),
        "$_requestResumeToken": refuse(ANY_BOOL), "$_resumeAfter": NOT_SUPPORTED}),
    # src/mongo/db/commands/create.idl (the options the stand-in does not implement are refused by the store)
    "create": Command({
        **_COLLECTION_OPTIONS, "capped": SAFE_BOOL, "autoIndexId": SAFE_BOOL, "idIndex": OBJECT, "size": INT,
        "max": INT, "storageEngine": OBJECT, "indexOptionDefaults": OBJECT, "collation": COLLATION,
        "clusteredIndex": Arg((*BOOLISH, "object")), "encryptedFields": OBJECT, "temp": SAFE_BOOL,
        "flags": INT}),
    # src/mongo/db/coll_mod.idl (CollModRequest)
    "collMod": Command({
        **_COLLECTION_OPTIONS, "index": OBJECT, "expireAfterSeconds": Arg(("string", *NUMBER)),
        "isTimeseriesNamespace": BOOL, "dryRun": SAFE_BOOL, "cappedSize": INT, "cappedMax": INT,
        "collectionUUID": NOT_SUPPORTED_UUID}),
    "drop": Command({"collectionUUID": NOT_SUPPORTED_UUID}),  # src/mongo/db/drop.idl
    "dropDatabase": Command({}),  # src/mongo/db/drop_database.idl
    # src/mongo/db/commands/rename_collection.idl
    "renameCollection": Command({"renameCollection": required(STRING), "to": required(STRING),
                                 "dropTarget": Arg(("bool", "binData"), check=_bool_not_uuid), "stayTemp": BOOL,
                                 "collectionUUID": NOT_SUPPORTED_UUID}),
    # src/mongo/db/list_collections.idl
    "listCollections": Command({"cursor": CURSOR, "filter": OBJECT, "nameOnly": SAFE_BOOL,
                                "authorizedCollections": SAFE_BOOL, "includePendingDrops": SAFE_BOOL}),
    # src/mongo/db/commands/list_databases.idl
    "listDatabases": Command({"filter": OBJECT, "nameOnly": SAFE_BOOL, "authorizedDatabases": SAFE_BOOL}),
    # src/mongo/db/create_indexes.idl (each index is checked by the handler, as the server checks NewIndexSpec)
    "createIndexes": Command({
        "v": INT, "indexes": Arg(("array",), required=True, items=Arg(("object",), fields={
            "key": required(OBJECT), "name": required(STRING), "unique": SAFE_BOOL, "sparse": SAFE_BOOL,
            "partialFilterExpression": OBJECT, "expireAfterSeconds": INT, "background": SAFE_BOOL, "v": INT,
            "collation": COLLATION})),
        "ignoreUnknownIndexOptions": refuse(ANY_BOOL), "commitQuorum": Arg(("string", *NUMBER)),
        "returnOnStart": ANY_BOOL, "isTimeseriesNamespace": BOOL, "collectionUUID": NOT_SUPPORTED_UUID}),
    # src/mongo/db/list_indexes.idl
    "listIndexes": Command({"cursor": CURSOR, "includeBuildUUIDs": ANY_BOOL, "includeIndexBuildInfo": ANY_BOOL,
                            "isTimeseriesNamespace": BOOL}),
    # src/mongo/db/drop_indexes.idl
    "dropIndexes": Command({"index": Arg(("string", "array", "object"), required=True, items=STRING),
                            "isTimeseriesNamespace": BOOL, "collectionUUID": NOT_SUPPORTED_UUID}),
    # src/mongo/db/commands/txn_cmds.idl
    "commitTransaction": Command({"commitTimestamp": refuse(TIMESTAMP), "recoveryToken": OBJECT}),
    "abortTransaction": Command({"recoveryToken": OBJECT}),
    # src/mongo/db/commands/profile.idl
    "profile": Command({"slowms": ANY_INT, "sampleRate": Arg(NUMBER), "filter": Arg(("object", "string"))}),
    # Not strict in MongoDB: a BasicCommand that reads what it needs and ignores the rest.
    "configureFailPoint": Command({
        "configureFailPoint": required(STRING),
        "mode": Arg(("string", "object"), required=True, fields={"times": NON_NEGATIVE, "skip": NON_NEGATIVE}),
        "data": Arg(("object",), fields={
            "failCommands": STRINGS, "errorCode": INT, "errorLabels": STRINGS, "closeConnection": SAFE_BOOL,
            "blockConnection": SAFE_BOOL, "blockTimeMS": NON_NEGATIVE, "appName": STRING})}, strict=False),
    "getLog": Command({"getLog": required(STRING)}, strict=False),
    # The stand-in's own command, strict as MongoDB's newer commands are.
    "realtimeStandIn": Command({"realtimeStandIn": required(STRING), "keepLast": NON_NEGATIVE,
                                "seconds": SECONDS}),
}
LENIENT = Command({}, strict=False)  # the commands not listed: not parsed strictly by MongoDB either

# The commands that take no writeConcern (a read, whose supportsWriteConcern() is false): one is InvalidOptions.
READ_COMMANDS = frozenset({"find", "getMore", "count", "distinct", "listCollections", "listIndexes",
                           "listDatabases", "killCursors"})
TRANSACTION_ENDS = frozenset({"commitTransaction", "abortTransaction"})


def parse(cmd: dict[str, Any]) -> dict[str, Any]:
    """The command with its arguments checked and normalised; :class:`CommandError` when they do not fit."""
    name = next(iter(cmd), "")
    db = cmd.get("$db")
    if db is None:
        raise CommandError(40571, "OP_MSG requests require a $db argument")
    if bson_type(db) != "string":
        raise wrong_type("$db", db, ("string",))
    if not db or any(c in db for c in '/\\. "\x00'):
        raise CommandError(73, f"Invalid database name: '{db}'")
    spec = COMMANDS.get(name, LENIENT)
    out = parse_object(spec.name or name, dict(cmd), spec.fields, strict=spec.strict,
                       known=GENERIC_ARGUMENTS | {name})
    out = parse_object("OperationSessionInfo", out, SESSION)
    _check_session_info(out)
    out = parse_object("", out, GENERIC)
    _check_write_concern_allowed(name, out)
    return out


def _check_write_concern_allowed(name: str, cmd: dict[str, Any]) -> None:
    """A read takes no writeConcern; a statement of a transaction neither, but its commit or abort
    (service_entry_point_common.cpp). Each is InvalidOptions (72)."""
    if "writeConcern" not in cmd:
        return
    if name in READ_COMMANDS or (name == "aggregate" and not _writes(cmd.get("pipeline"))):
        raise CommandError(72, "Command does not support writeConcern")
    if cmd.get("autocommit") is False and name not in TRANSACTION_ENDS:
        raise CommandError(72, "writeConcern is not allowed within a multi-statement transaction")


def _writes(pipeline: Any) -> bool:
    """Whether an aggregation pipeline ends in a stage that writes ($out, $merge)."""
    last = pipeline[-1] if isinstance(pipeline, list) and pipeline else None
    return isinstance(last, dict) and bool({"$out", "$merge"} & set(last))


def _check_session_info(cmd: dict[str, Any]) -> None:
    """How the session fields go together, as the server requires (initialize_operation_session_info.cpp): a
    txnNumber needs an lsid, autocommit a txnNumber (and may only be false), startTransaction autocommit (and may
    only be true). Each is InvalidOptions (72)."""
    if "txnNumber" in cmd and "lsid" not in cmd:
        raise CommandError(72, "Transaction number requires a session ID to also be specified")
    if "txnNumber" in cmd and cmd["txnNumber"] < 0:
        raise CommandError(72, "Transaction number cannot be negative")
    if "autocommit" in cmd and "txnNumber" not in cmd:
        raise CommandError(72, "'autocommit' field requires a transaction number to also be specified")
    if cmd.get("autocommit") is True:
        raise CommandError(72, "Specifying autocommit=true is not allowed.")
    if "startTransaction" in cmd and "autocommit" not in cmd:
        raise CommandError(72, "'startTransaction' field requires 'autocommit' field to also be specified")
    if cmd.get("startTransaction") is False:
        raise CommandError(72, "Specifying startTransaction=false is not allowed.")
