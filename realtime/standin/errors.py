"""MongoDB's error replies: codes, code names and labels, as the server sends them."""

from __future__ import annotations

from typing import Any

# Codes and names from mongodb/mongo src/mongo/base/error_codes.yml.
CODE_NAMES: dict[int, str] = {
    1: "InternalError",
    2: "BadValue",
    6: "HostUnreachable",
    7: "HostNotFound",
    9: "FailedToParse",
    11: "UserNotFound",
    13: "Unauthorized",
    14: "TypeMismatch",
    15: "Overflow",
    16: "InvalidLength",
    20: "IllegalOperation",
    24: "LockTimeout",
    26: "NamespaceNotFound",
    27: "IndexNotFound",
    28: "PathNotViable",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    47: "NoMatchingDocument",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    52: "DollarPrefixedFieldName",
    53: "InvalidIdField",
    56: "EmptyFieldName",
    59: "CommandNotFound",
    63: "OBSOLETE_StaleShardVersion",
    64: "WriteConcernTimeout",
    66: "ImmutableField",
    67: "CannotCreateIndex",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    79: "UnknownReplWriteConcern",
    85: "IndexOptionsConflict",
    86: "IndexKeySpecsConflict",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    100: "UnsatisfiableWriteConcern",
    112: "WriteConflict",
    115: "CommandNotSupported",
    117: "ConflictingOperationInProgress",
    121: "DocumentValidationFailure",
    125: "CommandFailed",
    133: "FailedToSatisfyReadPreference",
    134: "ReadConcernMajorityNotAvailableYet",
    136: "CappedPositionLost",
    150: "StaleEpoch",
    168: "InvalidPipelineOperator",
    189: "PrimarySteppedDown",
    225: "TransactionTooOld",
    234: "RetryChangeStream",
    237: "CursorKilled",
    239: "SnapshotTooOld",
    246: "SnapshotUnavailable",
    251: "NoSuchTransaction",
    256: "TransactionCommitted",
    260: "InvalidResumeToken",
    262: "ExceededTimeLimit",
    263: "OperationNotSupportedInTransaction",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    9001: "SocketException",
    10107: "NotWritablePrimary",
    10334: "BSONObjectTooLarge",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    11601: "Interrupted",
    11602: "InterruptedDueToReplStateChange",
    13388: "StaleConfig",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    15974: "Location15974",
    15975: "Location15975",
    31249: "Location31249",
}

# error_codes.yml's categories, as far as the labels below read them.
RETRIABLE_CODES = frozenset({6, 7, 89, 91, 134, 189, 262, 317, 358, 384, 402, 406, 407, 412, 9001, 10107, 11600,
                             11602, 13435, 13436})  # RetriableError
NETWORK_CODES = frozenset({6, 7, 89, 317, 384, 9001})  # NetworkError
NEED_RETARGETTING_CODES = frozenset({63, 150, 13388})  # NeedRetargettingError (StaleEpoch, StaleConfig, ...)
SNAPSHOT_CODES = frozenset({239, 246, 250, 272})  # SnapshotError

# Codes the server labels ResumableChangeStreamError when they end an aggregate or getMore of a change stream
# (error_labels.cpp, isResumableChangeStreamError: the RetriableError, NetworkError and NeedRetargettingError
# categories, plus RetryChangeStream, FailedToSatisfyReadPreference and ResumeTenantChangeStream).
RESUMABLE_CHANGE_STREAM_CODES = RETRIABLE_CODES | NETWORK_CODES | NEED_RETARGETTING_CODES | {133, 234, 401}


def is_transient_transaction_error(code: int, has_write_concern_error: bool, commit_or_abort: bool) -> bool:
    """Whether the server labels an error inside a transaction TransientTransactionError (error_labels.cpp):
    the transaction can be retried whole, nothing of it having persisted."""
    transient = code in (112, 24, 267, 343, 249) or code in SNAPSHOT_CODES or code in NEED_RETARGETTING_CODES
    if code == 251:  # NoSuchTransaction: on commit or abort, only if no write concern error says it may persist
        transient = not (commit_or_abort and has_write_concern_error)
    return transient


def error_labels(command: str, cmd: dict[str, Any], code: int | None, write_concern_code: int | None = None,
                 change_stream: bool = False) -> list[str]:
    """The labels the server adds to a reply that failed with ``code`` or has a write concern error of
    ``write_concern_code`` (error_labels.cpp's ErrorLabelBuilder). ``change_stream``: the command is an aggregate
    or getMore known, at the time of the error, to be a change stream's."""
    labels = []
    in_transaction = "txnNumber" in cmd and "autocommit" in cmd
    commit_or_abort = command in ("commitTransaction", "abortTransaction")
    if code is not None and in_transaction and is_transient_transaction_error(
            code, write_concern_code is not None, commit_or_abort):
        labels.append("TransientTransactionError")
    retryable_write = "txnNumber" in cmd and "autocommit" not in cmd
    if (retryable_write or (in_transaction and commit_or_abort)) and (
            code in RETRIABLE_CODES or write_concern_code in RETRIABLE_CODES):
        labels.append("RetryableWriteError")
    if (change_stream and command in ("aggregate", "getMore") and code is not None and write_concern_code is None
            and code in RESUMABLE_CHANGE_STREAM_CODES):
        labels.append("ResumableChangeStreamError")
    return labels


class CommandError(Exception):
    """A command failed; becomes ``{ok: 0, errmsg, code, codeName, errorLabels?}`` on the wire."""

    def __init__(
        self,
        code: int,
        message: str,
        labels: tuple[str, ...] | list[str] = (),
        code_name: str | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.labels = list(labels)
        self.code_name = code_name or CODE_NAMES.get(code, f"Location{code}")
        self.extra = extra or {}

    def reply(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"ok": 0.0, "errmsg": self.message, "code": self.code, "codeName": self.code_name}
        if self.labels:
            doc["errorLabels"] = list(self.labels)
        doc.update(self.extra)
        return doc


def bad_value(message: str) -> CommandError:
    return CommandError(2, message)


def unsupported(what: str) -> CommandError:
    """An option or operator real MongoDB knows but the stand-in does not implement."""
    return CommandError(2, f"{what} is not supported by the realtime MongoDB stand-in")


def history_lost() -> CommandError:
    return CommandError(
        286,
        "Resume of change stream was not possible, as the resume point may no longer be in the oplog.",
        ["NonResumableChangeStreamError"],
    )
