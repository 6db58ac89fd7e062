"""watchers.config.load: defaults, overrides, and a ConfigError naming the variable for each bad value."""

from __future__ import annotations

import os
import socket

import pytest

from realtime.config import ConfigError
from watchers.config import Fields, MappingConfig, WatcherConfig, load


def test_defaults() -> None:
    cfg = load({})
    assert cfg == WatcherConfig(
        mongodb_uri="mongodb://127.0.0.1:27017/?replicaSet=rs0",
        database="app",
        redis_url="redis://127.0.0.1:6379/0",
        mapping=MappingConfig(),
        prefix="rt",
        room_maxlen=10_000,
        global_maxlen=1_000_000,
        max_age=7 * 86400.0,
        lease_seconds=5.0,
        checkpoint_db="realtime_meta",
        checkpoint_interval=1.0,
        max_await_ms=1000,
        full_document="updateLookup",
        http=("127.0.0.1", 9100),
        stall_seconds=60.0,
        name=f"{socket.gethostname()}-{os.getpid()}",
        tombstone_seconds=7 * 86400.0,
    )
    assert cfg.collections == ("posts", "likes", "comments")
    assert cfg.mapping.fields == Fields("authorId", "postId", "userId", "hashtags", "visibility")
    assert cfg.mapping.public_values == ("public",) and cfg.mapping.missing_visibility_public is True
    assert cfg.mapping.post_fields == ("title", "text", "hashtags", "visibility", "media", "createdAt", "updatedAt")
    assert cfg.mapping.comment_fields == ("text", "createdAt", "updatedAt")
    assert (cfg.mapping.max_string, cfg.mapping.max_payload, cfg.mapping.max_depth) == (10_000, 65_536, 6)


def test_empty_values_mean_the_default_for_numbers() -> None:
    cfg = load({"REALTIME_ROOM_HISTORY": "", "REALTIME_LEASE_SECONDS": "  "})
    assert cfg.room_maxlen == 10_000 and cfg.lease_seconds == 5.0


def test_overrides() -> None:
    cfg = load({
        "MONGODB_URI": "mongodb+srv://cluster0.example.net/",
        "MONGODB_DB": "social",
        "REDIS_URL": "rediss://cache:6380/1",
        "REALTIME_POSTS_COLLECTION": "articles",
        "REALTIME_LIKES_COLLECTION": "hearts",
        "REALTIME_COMMENTS_COLLECTION": "replies",
        "REALTIME_FIELD_AUTHOR_ID": "owner",
        "REALTIME_FIELD_POST_ID": "article",
        "REALTIME_FIELD_USER_ID": "who",
        "REALTIME_FIELD_HASHTAGS": "tags",
        "REALTIME_FIELD_VISIBILITY": "audience",
        "REALTIME_PUBLIC_VISIBILITY": "public, everyone",
        "REALTIME_POST_FIELDS": " body ,tags,, audience ",
        "REALTIME_COMMENT_FIELDS": "body",
        "REALTIME_PAYLOAD_MAX_STRING": "2_000",
        "REALTIME_PAYLOAD_MAX_BYTES": "4096",
        "REALTIME_REDIS_PREFIX": "social-rt",
        "REALTIME_ROOM_HISTORY": "500",
        "REALTIME_GLOBAL_HISTORY": "100000",
        "REALTIME_HISTORY_MAX_AGE": "3600",
        "REALTIME_LEASE_SECONDS": "2.5",
        "REALTIME_CHECKPOINT_DB": "meta",
        "REALTIME_CHECKPOINT_INTERVAL": "0",
        "REALTIME_MAX_AWAIT_MS": "250",
        "REALTIME_FULL_DOCUMENT": "whenAvailable",
        "REALTIME_WATCHER_HTTP": "[::1]:9200",
        "REALTIME_STALL_SECONDS": "30",
        "REALTIME_WATCHER_NAME": " w1 ",
        "REALTIME_VISIBILITY_MISSING": "private",
        "REALTIME_POST_TOMBSTONE_SECONDS": "0",
    })
    assert cfg.mongodb_uri == "mongodb+srv://cluster0.example.net/" and cfg.database == "social"
    assert cfg.redis_url == "rediss://cache:6380/1"
    assert cfg.collections == ("articles", "hearts", "replies")
    assert cfg.mapping.fields == Fields("owner", "article", "who", "tags", "audience")
    assert cfg.mapping.public_values == ("public", "everyone")
    assert cfg.mapping.post_fields == ("body", "tags", "audience")
    assert cfg.mapping.comment_fields == ("body",)
    assert cfg.mapping.max_string == 2000 and cfg.mapping.max_payload == 4096
    assert cfg.prefix == "social-rt"
    assert (cfg.room_maxlen, cfg.global_maxlen, cfg.max_age) == (500, 100_000, 3600.0)
    assert (cfg.lease_seconds, cfg.checkpoint_db, cfg.checkpoint_interval) == (2.5, "meta", 0.0)
    assert cfg.max_await_ms == 250 and cfg.full_document == "whenAvailable"
    assert cfg.http == ("::1", 9200) and cfg.stall_seconds == 30.0 and cfg.name == "w1"
    assert cfg.mapping.missing_visibility_public is False and cfg.tombstone_seconds == 0.0


@pytest.mark.parametrize(("value", "expected"), [
    ("off", None), ("OFF", None), ("0.0.0.0:80", ("0.0.0.0", 80)), (":9100", ("0.0.0.0", 9100)),
    ("localhost:0", ("localhost", 0)), ("[::]:65535", ("::", 65535)),
])
def test_watcher_http_address(value: str, expected: tuple[str, int] | None) -> None:
    assert load({"REALTIME_WATCHER_HTTP": value}).http == expected


BAD = [
    ("REALTIME_ROOM_HISTORY", "lots"),
    ("REALTIME_ROOM_HISTORY", "1.5"),
    ("REALTIME_ROOM_HISTORY", "0"),
    ("REALTIME_ROOM_HISTORY", "-5"),
    ("REALTIME_GLOBAL_HISTORY", "1e6"),
    ("REALTIME_LEASE_SECONDS", "0.1"),
    ("REALTIME_LEASE_SECONDS", "601"),
    ("REALTIME_LEASE_SECONDS", "-1"),
    ("REALTIME_LEASE_SECONDS", "five"),
    ("REALTIME_LEASE_SECONDS", "nan"),
    ("REALTIME_LEASE_SECONDS", "inf"),
    ("REALTIME_HISTORY_MAX_AGE", "0.5"),
    ("REALTIME_CHECKPOINT_INTERVAL", "3601"),
    ("REALTIME_MAX_AWAIT_MS", "5"),
    ("REALTIME_MAX_AWAIT_MS", "60001"),
    ("REALTIME_STALL_SECONDS", "0"),
    ("REALTIME_PAYLOAD_MAX_STRING", "15"),
    ("REALTIME_PAYLOAD_MAX_BYTES", "1023"),
    ("REALTIME_PAYLOAD_MAX_BYTES", str(16 * 1024 * 1024 + 1)),
    ("MONGODB_URI", "http://127.0.0.1:27017"),
    ("MONGODB_URI", "127.0.0.1:27017"),
    ("MONGODB_URI", "mongo://127.0.0.1"),
    ("MONGODB_URI", ""),
    ("MONGODB_URI", "   "),
    ("REDIS_URL", "http://127.0.0.1:6379"),
    ("REDIS_URL", "localhost:6379"),
    ("MONGODB_DB", ""),
    ("REALTIME_CHECKPOINT_DB", "app"),  # the default MONGODB_DB
    ("REALTIME_CHECKPOINT_DB", ""),
    ("REALTIME_WATCHER_HTTP", "9100"),
    ("REALTIME_WATCHER_HTTP", "localhost"),
    ("REALTIME_WATCHER_HTTP", "localhost:http"),
    ("REALTIME_WATCHER_HTTP", "localhost:65536"),
    ("REALTIME_WATCHER_HTTP", "localhost:-1"),
    ("REALTIME_WATCHER_HTTP", "localhost:"),
    ("REALTIME_WATCHER_HTTP", ""),
    ("REALTIME_FULL_DOCUMENT", "required"),
    ("REALTIME_FULL_DOCUMENT", "default"),
    ("REALTIME_FULL_DOCUMENT", "updatelookup"),
    ("REALTIME_FULL_DOCUMENT", ""),
    ("REALTIME_REDIS_PREFIX", "rt x"),
    ("REALTIME_REDIS_PREFIX", "rt{1}"),
    ("REALTIME_REDIS_PREFIX", "rt*"),
    ("REALTIME_REDIS_PREFIX", ""),
    ("REALTIME_POST_FIELDS", "title,$where"),
    ("REALTIME_COMMENT_FIELDS", "text,a\x00b"),
    ("REALTIME_PUBLIC_VISIBILITY", "$public"),
    ("REALTIME_POSTS_COLLECTION", ""),
    ("REALTIME_FIELD_POST_ID", " "),
    ("REALTIME_WATCHER_NAME", ""),
    ("REALTIME_VISIBILITY_MISSING", "hidden"),
    ("REALTIME_VISIBILITY_MISSING", "Public"),
    ("REALTIME_VISIBILITY_MISSING", ""),
    ("REALTIME_POST_TOMBSTONE_SECONDS", "-1"),
    ("REALTIME_POST_TOMBSTONE_SECONDS", "a week"),
    ("REALTIME_POST_TOMBSTONE_SECONDS", "inf"),
]


@pytest.mark.parametrize(("name", "value"), BAD)
def test_bad_value_raises_config_error_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({name: value})
    assert name in str(info.value)
    assert isinstance(info.value, ValueError)


def test_checkpoint_db_equal_to_the_watched_db_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        load({"MONGODB_DB": "social", "REALTIME_CHECKPOINT_DB": "social"})
    assert "REALTIME_CHECKPOINT_DB" in str(info.value) and "MONGODB_DB" in str(info.value)
    assert load({"MONGODB_DB": "social"}).checkpoint_db == "realtime_meta"
    assert load({"MONGODB_DB": "realtime", "REALTIME_CHECKPOINT_DB": "app"}).database == "realtime"


@pytest.mark.parametrize("env", [
    {"REALTIME_LIKES_COLLECTION": "posts"},
    {"REALTIME_COMMENTS_COLLECTION": "likes"},
    {"REALTIME_POSTS_COLLECTION": "comments"},
    {"REALTIME_POSTS_COLLECTION": "x", "REALTIME_LIKES_COLLECTION": "x", "REALTIME_COMMENTS_COLLECTION": "x"},
    {"REALTIME_LIKES_COLLECTION": " posts "},  # the same name once trimmed
])
def test_duplicate_collection_names_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        load(env)
    for name in env:
        assert name in str(info.value)
