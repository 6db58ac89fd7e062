"""The server's configuration, from the environment. Every variable is in docs/configuration.md."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from realtime.auth import MIN_SECRET_LENGTH, TokenVerifier
from realtime.config import ConfigError, Env
from realtime.protocol import SessionConfig
from realtime.server.addresses import Network, parse_networks
from watchers.config import MappingConfig, load_mapping


@dataclass(frozen=True)
class AuthConfig:
    secret: str | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None
    audience: str | None = None
    issuer: str | None = None
    leeway: float = 0.0

    def verifier(self, jwks_text: str | None = None) -> TokenVerifier | None:
        if self.secret is not None:
            return TokenVerifier(secret=self.secret, audience=self.audience, issuer=self.issuer, leeway=self.leeway)
        text = jwks_text
        if text is None and self.jwks_file is not None:
            text = Path(self.jwks_file).read_text()
        if text is None:
            return None
        return TokenVerifier(jwks=json.loads(text), audience=self.audience, issuer=self.issuer, leeway=self.leeway)


@dataclass(frozen=True)
class ServerConfig:
    redis_url: str
    prefix: str
    host: str
    port: int
    workers: int
    auth: AuthConfig
    session: SessionConfig
    max_frame: int = 64 * 1024
    queue_bytes: int = 1 << 20  # per connection, past which it is closed as slow
    queue_messages: int = 5_000
    send_buffer: int = 0  # SO_SNDBUF of WebSocket sockets; 0 = the kernel's default
    max_conns_per_user: int = 20
    max_conns_per_address: int = 200
    trusted_proxies: tuple[Network, ...] = ()  # peers whose X-Forwarded-For names the client's address
    heartbeat: float = 20.0
    heartbeat_timeout: float = 20.0
    replay_limit: int = 10_000  # events per replay; past it the client gets a reset
    replay_memory: int = 64 << 20  # bytes that the replays in flight of a process may hold together
    replay_memory_wait: float = 5.0  # seconds a replay may wait for that memory before `unavailable`
    shutdown_grace: float = 10.0
    head_timeout: float = 10.0  # seconds a request's head may take from its first byte (slowloris)
    redis_timeout: float = 5.0  # seconds any one Redis command may take before it fails
    retry_seconds: float = 2.0  # how long a client's request retries Redis (and MongoDB) before `unavailable`
    read_count: int = 512
    lag_ready_seconds: float = 10.0  # /readyz fails when delivery lags more than this
    ready_timeout: float = 1.0  # seconds /readyz waits for Redis before it answers 503
    cors_origins: tuple[str, ...] = ()  # origins allowed to read /poll and /sse from a page ("*": any)
    presence_ttl: float = 30.0  # an instance's presence entries expire this long after its last refresh
    typing_ttl: float = 5.0  # seconds after the last typing notice before user:stopped_typing
    typing_interval: float = 1.0  # at most one typing notice per connection per this many seconds
    presence_rooms: tuple[str, ...] = ("post:",)  # presence is tracked in rooms whose name starts so
    mongodb_uri: str | None = None  # for replays from the oplog (none: trimmed history gives a reset)
    database: str = "app"
    mapping: MappingConfig = field(default_factory=MappingConfig)
    deep_seconds: float = 10.0
    deep_concurrency: int = 4
    fast_path: bool = True  # the WebSocket fast path of realtime/server/lean.py, where its versions match
    demo: bool = False  # REALTIME_DEMO: /demo and its write API (realtime/server/demo.py); development only
    demo_mongodb_uri: str | None = None  # where the demo write API writes (MONGODB_URI)


def _default_listen(env: Env) -> str:
    """127.0.0.1:8000, or port SOCKET_PORT (the original design's name), read when REALTIME_LISTEN is not set."""
    port = env.environ.get("SOCKET_PORT")
    if port is None or "REALTIME_LISTEN" in env.environ:
        return "127.0.0.1:8000"
    return f"127.0.0.1:{env.integer('SOCKET_PORT', 8000, minimum=0, maximum=65535)}"


def load(environ: Mapping[str, str] | None = None) -> ServerConfig:
    env = Env(os.environ if environ is None else environ)
    secret = env.environ.get("REALTIME_JWT_SECRET") or None
    jwks_file = env.environ.get("REALTIME_JWKS_FILE") or None
    jwks_url = env.environ.get("REALTIME_JWKS_URL") or None
    if sum(x is not None for x in (secret, jwks_file, jwks_url)) > 1:
        raise ConfigError("set only one of REALTIME_JWT_SECRET, REALTIME_JWKS_FILE and REALTIME_JWKS_URL")
    if secret is not None and len(secret) < MIN_SECRET_LENGTH:
        raise ConfigError(f"REALTIME_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters "
                          "(HS256 needs a strong secret)")
    if jwks_file is not None and not Path(jwks_file).is_file():
        raise ConfigError(f"REALTIME_JWKS_FILE: no such file: {jwks_file}")
    if jwks_url is not None:
        env.url("REALTIME_JWKS_URL", jwks_url, ("https", "http"))
    auth = AuthConfig(secret, jwks_file, jwks_url, env.environ.get("REALTIME_JWT_AUDIENCE") or None,
                      env.environ.get("REALTIME_JWT_ISSUER") or None,
                      env.number("REALTIME_JWT_LEEWAY", 0.0, maximum=300))
    anonymous = env.flag("REALTIME_ALLOW_ANONYMOUS", False)
    if secret is None and jwks_file is None and jwks_url is None and not anonymous:
        raise ConfigError("configure authentication: REALTIME_JWT_SECRET (HS256), REALTIME_JWKS_FILE or "
                          "REALTIME_JWKS_URL (RS256/ES256), or REALTIME_ALLOW_ANONYMOUS=true for public rooms only")
    session = SessionConfig(
        max_rooms=env.integer("REALTIME_MAX_ROOMS", 200, minimum=1, maximum=100_000),
        rate=env.number("REALTIME_RATE", 20.0, minimum=0.1),
        burst=env.integer("REALTIME_BURST", 40, minimum=1),
        flood_close_after=env.integer("REALTIME_FLOOD_CLOSE_AFTER", 50, minimum=1),
        auth_timeout=env.number("REALTIME_AUTH_TIMEOUT", 10.0, minimum=0.1),
        idle_timeout=env.number("REALTIME_IDLE_TIMEOUT", 300.0, minimum=1.0),
        allow_anonymous=anonymous,
    )
    try:
        trusted_proxies = parse_networks(env.environ.get("REALTIME_TRUSTED_PROXIES", ""))
    except ValueError as exc:
        raise ConfigError(f"REALTIME_TRUSTED_PROXIES: {exc}") from None
    listen = env.address("REALTIME_LISTEN", _default_listen(env))
    if listen is None:
        raise ConfigError("REALTIME_LISTEN cannot be off")
    prefix = env.text("REALTIME_REDIS_PREFIX", "rt")
    demo = env.flag("REALTIME_DEMO", False)
    demo_mongodb_uri = None
    if demo:  # development only: anyone may mint tokens and write as any user
        if secret is None:
            raise ConfigError("REALTIME_DEMO=true needs REALTIME_JWT_SECRET (the demo mints HS256 tokens with it)")
        if not env.environ.get("MONGODB_URI"):
            raise ConfigError("REALTIME_DEMO=true needs MONGODB_URI (the demo's write API writes to MongoDB)")
        demo_mongodb_uri = env.url("MONGODB_URI", "mongodb://x", ("mongodb", "mongodb+srv"))
    return ServerConfig(
        redis_url=env.url("REDIS_URL", "redis://127.0.0.1:6379/0", ("redis", "rediss", "unix")),
        prefix=prefix,
        host=listen[0],
        port=listen[1],
        workers=env.integer("REALTIME_WORKERS", 1, minimum=1, maximum=256),
        auth=auth,
        session=session,
        max_frame=env.integer("REALTIME_MAX_FRAME", 64 * 1024, minimum=256, maximum=16 * 1024 * 1024),
        queue_bytes=env.integer("REALTIME_QUEUE_BYTES", 1 << 20, minimum=1024),
        queue_messages=env.integer("REALTIME_QUEUE_MESSAGES", 5_000, minimum=1),
        send_buffer=env.integer("REALTIME_SEND_BUFFER", 0, minimum=0),
        max_conns_per_user=env.integer("REALTIME_MAX_CONNECTIONS_PER_USER", 20, minimum=1),
        max_conns_per_address=env.integer("REALTIME_MAX_CONNECTIONS_PER_ADDRESS", 200, minimum=1),
        trusted_proxies=trusted_proxies,
        heartbeat=env.number("REALTIME_HEARTBEAT", 20.0, minimum=0.0),
        heartbeat_timeout=env.number("REALTIME_HEARTBEAT_TIMEOUT", 20.0, minimum=0.1),
        replay_limit=env.integer("REALTIME_REPLAY_LIMIT", 10_000, minimum=1),
        replay_memory=env.integer("REALTIME_REPLAY_MEMORY", 64 << 20, minimum=64 << 10),
        replay_memory_wait=env.number("REALTIME_REPLAY_MEMORY_WAIT", 5.0, minimum=0.0, maximum=60),
        shutdown_grace=env.number("REALTIME_SHUTDOWN_GRACE", 10.0, minimum=0.0),
        head_timeout=env.number("REALTIME_HEAD_TIMEOUT", 10.0, minimum=0.5, maximum=300),
        redis_timeout=env.number("REALTIME_REDIS_TIMEOUT", 5.0, minimum=0.1, maximum=300),
        retry_seconds=env.number("REALTIME_RETRY_SECONDS", 2.0, minimum=0.0, maximum=60),
        lag_ready_seconds=env.number("REALTIME_READY_MAX_LAG", 10.0, minimum=0.1),
        ready_timeout=env.number("REALTIME_READY_TIMEOUT", 1.0, minimum=0.05, maximum=60),
        cors_origins=cors_origins(env),
        presence_ttl=env.number("REALTIME_PRESENCE_TTL", 30.0, minimum=1.0, maximum=3600),
        typing_ttl=env.number("REALTIME_TYPING_TTL", 5.0, minimum=0.5, maximum=300),
        typing_interval=env.number("REALTIME_TYPING_INTERVAL", 1.0, minimum=0.0, maximum=60),
        presence_rooms=env.names("REALTIME_PRESENCE_ROOMS", "post:"),
        mongodb_uri=(env.url("MONGODB_URI", "mongodb://x", ("mongodb", "mongodb+srv"))
                     if env.environ.get("MONGODB_URI") and env.flag("REALTIME_DEEP_REPLAY", True) else None),
        database=env.text("MONGODB_DB", "app"),
        mapping=load_mapping(env),
        deep_seconds=env.number("REALTIME_DEEP_REPLAY_SECONDS", 10.0, minimum=0.1, maximum=600),
        deep_concurrency=env.integer("REALTIME_DEEP_REPLAY_CONCURRENCY", 4, minimum=1, maximum=1000),
        fast_path=env.flag("REALTIME_FAST_PATH", True),
        demo=demo,
        demo_mongodb_uri=demo_mongodb_uri,
    )


def cors_origins(env: Env) -> tuple[str, ...]:
    """REALTIME_CORS_ORIGIN (or SOCKET_CORS_ORIGIN): a comma-separated list of origins, or ``*``."""
    name = "REALTIME_CORS_ORIGIN" if "REALTIME_CORS_ORIGIN" in env.environ else "SOCKET_CORS_ORIGIN"
    raw = env.environ.get(name, "")
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in origins:
        if origin == "*":
            continue
        scheme, sep, rest = origin.partition("://")
        if scheme not in ("http", "https") or not sep or not rest or "/" in rest:
            raise ConfigError(f"{name}: {origin!r} is not an origin (scheme://host[:port], or *)")
    return origins
