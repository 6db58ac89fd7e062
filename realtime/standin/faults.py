"""Fault injection through MongoDB's own ``failCommand`` fail point.

Real servers started with ``enableTestCommands=1`` accept
``{configureFailPoint: "failCommand", mode, data: {failCommands, errorCode, errorLabels,
closeConnection, blockConnection, blockTimeMS}}``; the stand-in accepts the same, so the same fault
tests run against both. ``mode`` is ``"alwaysOn"``, ``"off"``, ``{times: n}`` or ``{skip: n}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from realtime.standin.errors import CommandError, bad_value

NEVER_FAILED = frozenset({"hello", "isMaster", "ismaster", "configureFailPoint", "realtimeStandIn"})


@dataclass
class Fault:
    commands: frozenset[str]
    times: int | None  # None = always
    skip: int = 0
    error_code: int | None = None
    error_labels: list[str] | None = None
    close_connection: bool = False
    block_ms: int = 0
    app_name: str | None = None
    fired: int = field(default=0)


@dataclass(frozen=True)
class Action:
    """What to do to one command: wait first, then hang up, fail, or run normally.

    ``labels_given`` tells whether the fail point named the error's labels; when it did not, the
    server adds the labels it would add to a real error of that code.
    """

    block_ms: int = 0
    close_connection: bool = False
    error: CommandError | None = None
    labels_given: bool = False


class FailPoints:
    def __init__(self) -> None:
        self.fault: Fault | None = None

    def configure(self, cmd: dict[str, Any]) -> None:
        name = cmd.get("configureFailPoint")
        if name != "failCommand":
            raise bad_value(f"unknown fail point: {name!r}; the stand-in implements only 'failCommand'")
        mode = cmd.get("mode")
        if mode == "off":
            self.fault = None
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
        commands = data.get("failCommands")
        if not isinstance(commands, list) or not commands:
            raise bad_value("failCommand needs data.failCommands, a non-empty array of command names")
        code = data.get("errorCode")
        self.fault = Fault(
            commands=frozenset(str(c) for c in commands),
            times=times,
            skip=skip,
            error_code=None if code is None else int(code),
            error_labels=None if data.get("errorLabels") is None else [str(x) for x in data["errorLabels"]],
            close_connection=bool(data.get("closeConnection")),
            block_ms=int(data.get("blockTimeMS", 0)) if data.get("blockConnection") else 0,
            app_name=data.get("appName"),
        )

    def check(self, name: str, app_name: str | None) -> Action | None:
        """The action for a command named ``name`` from a client named ``app_name``, if any."""
        fault = self.fault
        if fault is None or name in NEVER_FAILED or name not in fault.commands:
            return None
        if fault.app_name is not None and fault.app_name != app_name:
            return None
        if fault.skip > 0:
            fault.skip -= 1
            return None
        if fault.times is not None:
            if fault.times <= 0:
                self.fault = None
                return None
            fault.times -= 1
            if fault.times == 0:
                self.fault = None
        fault.fired += 1
        error = None
        if fault.error_code is not None:
            error = CommandError(fault.error_code, f"Failing command {name} via 'failCommand' failpoint",
                                 fault.error_labels or [])
        return Action(fault.block_ms, fault.close_connection, error, fault.error_labels is not None)
