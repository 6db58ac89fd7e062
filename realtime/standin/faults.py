"""Fault injection through MongoDB's own fail points: ``failCommand`` and ``failGetMoreAfterCursorCheckout``.

Real servers started with ``enableTestCommands=1`` accept
``{configureFailPoint: "failCommand", mode, data: {failCommands, errorCode, errorLabels, writeConcernError,
closeConnection, blockConnection, blockTimeMS, appName}}``; the stand-in accepts the same, so the same fault tests
run against both. ``mode`` is ``"alwaysOn"``, ``"off"``, ``{times: n}`` or ``{skip: n}``.

- ``failCommand`` fires before the command runs: ``errorCode`` fails it (with ``errorLabels`` when given, else
  with the labels the server adds to an error of that code, which it decides before it knows what a getMore's
  cursor is: so never ``ResumableChangeStreamError`` on a getMore); ``writeConcernError`` lets the command run
  and adds that document to its reply as ``writeConcernError``.
- ``failGetMoreAfterCursorCheckout`` (``data: {errorCode}``) fails the next getMore once its cursor is found:
  the error then gets the labels a real error of that cursor gets (``ResumableChangeStreamError`` on a change
  stream, for the resumable codes), as the drivers' change-stream specs expect.
- ``maxTimeAlwaysTimeOut`` (no data) makes every operation that has a time limit (``maxTimeMS``, or a getMore
  on the cursor of a find or aggregate that had one) exceed it at once: ``MaxTimeMSExpired`` (50), as the
  server's fail point of that name does (operation_context.cpp, ``hasDeadlineExpired``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realtime.standin.errors import CommandError, bad_value

NEVER_FAILED = frozenset({"hello", "isMaster", "ismaster", "configureFailPoint", "realtimeStandIn"})
FAIL_COMMAND = "failCommand"
FAIL_GET_MORE = "failGetMoreAfterCursorCheckout"
MAX_TIME_ALWAYS_TIME_OUT = "maxTimeAlwaysTimeOut"
FAIL_POINTS = (FAIL_COMMAND, FAIL_GET_MORE, MAX_TIME_ALWAYS_TIME_OUT)


@dataclass
class Fault:
    commands: frozenset[str]
    times: int | None  # None = always
    skip: int = 0
    error_code: int | None = None
    error_labels: list[str] | None = None
    write_concern_error: dict[str, Any] | None = None
    close_connection: bool = False
    block_ms: int = 0
    app_name: str | None = None
    fired: int = field(default=0)


@dataclass(frozen=True)
class Action:
    """What to do to one command: wait first, then hang up, fail, or run normally (and add a write concern error).

    ``labels`` are the labels the fail point names for its error or write concern error; when it names none
    (None), the server adds the labels it would add to a real error of that code.
    """

    block_ms: int = 0
    close_connection: bool = False
    error: CommandError | None = None
    labels: list[str] | None = None
    write_concern_error: dict[str, Any] | None = None


class FailPoints:
    def __init__(self) -> None:
        self.faults: dict[str, Fault] = {}

    @property
    def fault(self) -> Fault | None:
        """The ``failCommand`` fail point, when it is on."""
        return self.faults.get(FAIL_COMMAND)

    def configure(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("configureFailPoint")
        if name not in FAIL_POINTS:
            raise bad_value(f"unknown fail point: {name!r}; the stand-in implements "
                            + ", ".join(f"'{point}'" for point in FAIL_POINTS))
        mode = cmd.get("mode")
        if mode == "off":
            self.faults.pop(name, None)
            return
        times: int | None = None
        skip = 0
        if mode == "alwaysOn":
            pass
        elif isinstance(mode, dict) and "times" in mode:
            times = int(mode["times"])
        elif isinstance(mode, dict) and "skip" in mode:
            skip = int(mode["skip"])
        else:
            raise bad_value(f"unsupported fail point mode: {mode!r}")
        data = cmd.get("data") or {}
        if name == FAIL_COMMAND:
            commands = data.get("failCommands")
            if not isinstance(commands, list) or not commands:
                raise bad_value("failCommand needs data.failCommands, a non-empty array of command names")
        elif name == FAIL_GET_MORE:
            commands = ["getMore"]
            if data.get("errorCode") is None:
                raise bad_value(f"{FAIL_GET_MORE} needs data.errorCode")
        else:
            commands = []
        code = data.get("errorCode")
        wce = data.get("writeConcernError")
        if wce is not None and (not isinstance(wce, dict) or not isinstance(wce.get("code"), int)):
            raise bad_value("failCommand's data.writeConcernError must be a document with an integer code")
        self.faults[name] = Fault(
            commands=frozenset(str(c) for c in commands),
            times=times,
            skip=skip,
            error_code=None if code is None else int(code),
            error_labels=None if data.get("errorLabels") is None else [str(x) for x in data["errorLabels"]],
            write_concern_error=None if wce is None else dict(wce),
            close_connection=bool(data.get("closeConnection")),
            block_ms=int(data.get("blockTimeMS", 0)) if data.get("blockConnection") else 0,
            app_name=data.get("appName"),
        )

    def check(self, name: str, app_name: str | None, point: str = FAIL_COMMAND) -> Action | None:
        """The action fail point ``point`` takes on a command named ``name`` from a client named ``app_name``."""
        fault = self.faults.get(point)
        if fault is None or name in NEVER_FAILED or name not in fault.commands:
            return None
        if fault.app_name is not None and fault.app_name != app_name:
            return None
        if not self._fires(point, fault):
            return None
        error = None
        if fault.error_code is not None:
            error = CommandError(fault.error_code, f"Failing command {name} via '{point}' failpoint",
                                 fault.error_labels or [])
        labels = None if fault.error_labels is None else list(fault.error_labels)
        return Action(fault.block_ms, fault.close_connection, error, labels,
                      None if error is not None else fault.write_concern_error)

    def time_out(self) -> bool:
        """Whether ``maxTimeAlwaysTimeOut`` makes an operation with a time limit exceed it now."""
        fault = self.faults.get(MAX_TIME_ALWAYS_TIME_OUT)
        return fault is not None and self._fires(MAX_TIME_ALWAYS_TIME_OUT, fault)

    def _fires(self, point: str, fault: Fault) -> bool:
        """Whether ``fault`` fires this time, by its mode (``skip`` first, then ``times``); counts it."""
        if fault.skip > 0:
            fault.skip -= 1
            return False
        if fault.times is not None:
            if fault.times <= 0:
                self.faults.pop(point, None)
                return False
            fault.times -= 1
            if fault.times == 0:
                self.faults.pop(point, None)
        fault.fired += 1
        return True
