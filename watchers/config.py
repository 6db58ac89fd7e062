"""The watcher's configuration, from the environment. Every variable is in docs/configuration.md."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from realtime.config import ConfigError, Env


@dataclass(frozen=True)
class Fields:
    """Names of the document fields the mapping reads."""

    author_id: str = "authorId"  # on posts: the author; on comments: the commenter (falls back to user_id)
    post_id: str = "postId"  # on likes and comments: the post
    user_id: str = "userId"  # on likes (and comments): who liked or commented
    hashtags: str = "hashtags"
    visibility: str = "visibility"


@dataclass(frozen=True)
class MappingConfig:
    posts: str = "posts"
    likes: str = "likes"
    comments: str = "comments"
    fields: Fields = Fields()
    public_values: tuple[str, ...] = ("public",)  # visibility values that make a post public
    missing_visibility_public: bool = True  # a post without the visibility field is public (False: private)
    post_fields: tuple[str, ...] = ("title", "text", "hashtags", "visibility", "media", "createdAt", "updatedAt")
    comment_fields: tuple[str, ...] = ("text", "createdAt", "updatedAt")
    max_string: int = 10_000  # characters kept of a string value in a payload
    max_payload: int = 64 * 1024  # bytes of JSON; past this, the largest fields are dropped
    max_depth: int = 6  # nesting kept in a payload value


@dataclass(frozen=True)
class WatcherConfig:
    mongodb_uri: str
    database: str
    redis_url: str
    mapping: MappingConfig
    prefix: str = "rt"
    room_maxlen: int = 10_000
    global_maxlen: int = 1_000_000
    max_age: float = 7 * 86400.0
    lease_seconds: float = 5.0
    checkpoint_db: str = "realtime_meta"
    checkpoint_interval: float = 1.0
    max_await_ms: int = 1000
    full_document: str = "updateLookup"
    http: tuple[str, int] | None = ("127.0.0.1", 9100)
    stall_seconds: float = 60.0
    name: str = "watcher"
    tombstone_seconds: float = 7 * 86400.0  # how long the post index remembers a deleted post's routing
    read_batch: int = 2000  # changes taken from the driver's buffer per read (never waiting for more)
    publish_batch: int = 500  # changes per publish script call
    read_ahead: bool = True  # read the next changes while a read is published

    @property
    def collections(self) -> tuple[str, str, str]:
        return (self.mapping.posts, self.mapping.likes, self.mapping.comments)


def load_mapping(env: Env) -> MappingConfig:
    """The mapping's part of the configuration (collections, field names, allow-lists): watchers and servers
    (for replays from the oplog) read the same variables."""
    fields = Fields(
        author_id=env.text("REALTIME_FIELD_AUTHOR_ID", "authorId"),
        post_id=env.text("REALTIME_FIELD_POST_ID", "postId"),
        user_id=env.text("REALTIME_FIELD_USER_ID", "userId"),
        hashtags=env.text("REALTIME_FIELD_HASHTAGS", "hashtags"),
        visibility=env.text("REALTIME_FIELD_VISIBILITY", "visibility"),
    )
    defaults = MappingConfig()
    mapping = MappingConfig(
        posts=env.text("REALTIME_POSTS_COLLECTION", "posts"),
        likes=env.text("REALTIME_LIKES_COLLECTION", "likes"),
        comments=env.text("REALTIME_COMMENTS_COLLECTION", "comments"),
        fields=fields,
        public_values=env.names("REALTIME_PUBLIC_VISIBILITY", "public"),
        missing_visibility_public=env.choice("REALTIME_VISIBILITY_MISSING", "public",
                                             ("public", "private")) == "public",
        post_fields=env.names("REALTIME_POST_FIELDS", ",".join(defaults.post_fields)),
        comment_fields=env.names("REALTIME_COMMENT_FIELDS", ",".join(defaults.comment_fields)),
        max_string=env.integer("REALTIME_PAYLOAD_MAX_STRING", defaults.max_string, minimum=16),
        max_payload=env.integer("REALTIME_PAYLOAD_MAX_BYTES", defaults.max_payload, minimum=1024,
                                maximum=16 * 1024 * 1024),
    )
    if len({mapping.posts, mapping.likes, mapping.comments}) != 3:
        raise ConfigError("REALTIME_POSTS_COLLECTION, REALTIME_LIKES_COLLECTION and REALTIME_COMMENTS_COLLECTION "
                          "must name three different collections")
    return mapping


def load(environ: Mapping[str, str] | None = None) -> WatcherConfig:
    env = Env(os.environ if environ is None else environ)
    mapping = load_mapping(env)
    database = env.text("MONGODB_DB", "app")
    checkpoint_db = env.text("REALTIME_CHECKPOINT_DB", "realtime_meta")
    if checkpoint_db == database:
        raise ConfigError("REALTIME_CHECKPOINT_DB must differ from MONGODB_DB: the checkpoint must live outside "
                          "the watched database")
    prefix = env.text("REALTIME_REDIS_PREFIX", "rt")
    if any(c in prefix for c in " {}*?"):
        raise ConfigError(f"REALTIME_REDIS_PREFIX must not contain spaces, braces or wildcards, got {prefix!r}")
    return WatcherConfig(
        mongodb_uri=env.url("MONGODB_URI", "mongodb://127.0.0.1:27017/?replicaSet=rs0", ("mongodb", "mongodb+srv")),
        database=database,
        redis_url=env.url("REDIS_URL", "redis://127.0.0.1:6379/0", ("redis", "rediss", "unix")),
        mapping=mapping,
        prefix=prefix,
        room_maxlen=env.integer("REALTIME_ROOM_HISTORY", 10_000, minimum=1),
        global_maxlen=env.integer("REALTIME_GLOBAL_HISTORY", 1_000_000, minimum=1),
        max_age=env.number("REALTIME_HISTORY_MAX_AGE", 7 * 86400.0, minimum=1.0),
        lease_seconds=env.number("REALTIME_LEASE_SECONDS", 5.0, minimum=0.5, maximum=600),
        checkpoint_db=checkpoint_db,
        checkpoint_interval=env.number("REALTIME_CHECKPOINT_INTERVAL", 1.0, minimum=0.0, maximum=3600),
        max_await_ms=env.integer("REALTIME_MAX_AWAIT_MS", 1000, minimum=10, maximum=60_000),
        full_document=env.choice("REALTIME_FULL_DOCUMENT", "updateLookup", ("updateLookup", "whenAvailable")),
        http=env.address("REALTIME_WATCHER_HTTP", "127.0.0.1:9100"),
        stall_seconds=env.number("REALTIME_STALL_SECONDS", 60.0, minimum=1.0),
        name=env.text("REALTIME_WATCHER_NAME", f"{socket.gethostname()}-{os.getpid()}"),
        tombstone_seconds=env.number("REALTIME_POST_TOMBSTONE_SECONDS", 7 * 86400.0, minimum=0.0,
                                     maximum=10 * 365 * 86400.0),
        read_batch=env.integer("REALTIME_READ_BATCH", 2000, minimum=1, maximum=100_000),
        publish_batch=env.integer("REALTIME_PUBLISH_BATCH", 500, minimum=1, maximum=10_000),
        read_ahead=env.flag("REALTIME_READ_AHEAD", True),
    )
