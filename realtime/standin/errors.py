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
    14: "TypeMismatch",
    16: "InvalidLength",
    20: "IllegalOperation",
    26: "NamespaceNotFound",
    40: "ConflictingUpdateOperators",
    43: "CursorNotFound",
    47: "NoMatchingDocument",
    48: "NamespaceExists",
    50: "MaxTimeMSExpired",
    59: "CommandNotFound",
    66: "ImmutableField",
    72: "InvalidOptions",
    73: "InvalidNamespace",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    112: "WriteConflict",
    133: "FailedToSatisfyReadPreference",
    136: "CappedPositionLost",
    168: "InvalidPipelineOperator",
    189: "PrimarySteppedDown",
    234: "RetryChangeStream",
    251: "NoSuchTransaction",
    256: "TransactionCommitted",
    260: "InvalidResumeToken",
    262: "ExceededTimeLimit",
    263: "OperationNotSupportedInTransaction",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    9001: "SocketException",
    10334: "BSONObjectTooLarge",
    10107: "NotWritablePrimary",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
    15974: "Location15974",
    15975: "Location15975",
    31249: "Location31249",
}

# Codes the server labels ResumableChangeStreamError when they end an aggregate or getMore of a change
# stream (error_labels.cpp isResumableChangeStreamError: the RetriableError and NetworkError categories,
# plus RetryChangeStream and FailedToSatisfyReadPreference).
RESUMABLE_CHANGE_STREAM_CODES = frozenset(
    {6, 7, 89, 91, 133, 189, 234, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)
TRANSIENT_TRANSACTION_CODES = frozenset({112, 251})


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
