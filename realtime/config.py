"""Reading configuration from an environment: typed values, validated, with errors that name the variable.

Each process builds a frozen dataclass from an environ mapping passed in (``os.environ`` in production,
a plain dict in tests). Every variable is listed in ``docs/configuration.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlparse


class ConfigError(ValueError):
    """A variable is missing or malformed; the message names it and says what is expected."""


class Env:
    """Typed reads from an environ; every failure is a :class:`ConfigError` naming the variable."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def text(self, name: str, default: str) -> str:
        value = self.environ.get(name, default).strip()
        if not value:
            raise ConfigError(f"{name} must not be empty")
        return value

    def integer(self, name: str, default: int, *, minimum: int = 0, maximum: int = 2**62) -> int:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw.strip().replace("_", ""))
        except ValueError:
            raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float = 0.0, maximum: float = 1e12) -> float:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"{name} must be between {minimum:g} and {maximum:g}, got {value:g}")
        return value

    def names(self, name: str, default: str) -> tuple[str, ...]:
        """A comma-separated list of field or collection names."""
        raw = self.environ.get(name, default)
        items = tuple(part.strip() for part in raw.split(",") if part.strip())
        for item in items:
            if item.startswith("$") or "\x00" in item:
                raise ConfigError(f"{name}: {item!r} is not a valid field name")
        return items

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.environ.get(name, default).strip()
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        value = raw.strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name} must be true or false, got {raw!r}")

    def url(self, name: str, default: str, schemes: tuple[str, ...]) -> str:
        value = self.text(name, default)
        scheme = urlparse(value).scheme
        if scheme not in schemes:
            raise ConfigError(f"{name} must be a URL starting with {' or '.join(s + '://' for s in schemes)};"
                              f" got {value!r}")
        return value

    def address(self, name: str, default: str) -> tuple[str, int] | None:
        """``host:port`` to listen on, or None for ``off``."""
        value = self.text(name, default)
        if value.lower() == "off":
            return None
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"{name} must be host:port (or off), got {value!r}")
        return host.strip("[]") or "0.0.0.0", int(port)
