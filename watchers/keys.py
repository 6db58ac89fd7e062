"""Redis key names. One hash tag (the prefix in braces) keeps every key of a deployment in one Redis Cluster
slot, so one Lua script can touch them all."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class Keys:
    prefix: str = "rt"

    @cached_property
    def tag(self) -> str:
        return "{" + self.prefix + "}"

    @property
    def events(self) -> str:
        """The global stream: every event, in order, with the resume token of its change."""
        return f"{self.tag}:events"

    @property
    def resets(self) -> str:
        """Reset markers only, so a server can tell whether history is broken after an id."""
        return f"{self.tag}:resets"

    @property
    def meta(self) -> str:
        """Hash: the last published token (``token``, ``token_json``), ``last_id``, ``at`` (time:position), and
        the ``fullDocument`` mode changes are read with (``full_document``) from a cluster time on
        (``full_document_since``)."""
        return f"{self.tag}:meta"

    @property
    def leader(self) -> str:
        return f"{self.tag}:leader"

    @property
    def fence(self) -> str:
        return f"{self.tag}:fence"

    @property
    def likes(self) -> str:
        """Hash: post id -> like count."""
        return f"{self.tag}:likes"

    @property
    def likes_since(self) -> str:
        """Hash: post id -> the point in the stream (watchers.publish.point) its count was read from MongoDB at."""
        return f"{self.tag}:likes:since"

    def index(self, kind: str) -> str:
        """Hash: like or comment id -> {postId, userId}, to route deletes that carry no pre-image."""
        return f"{self.tag}:idx:{kind}"

    def post(self, post_id: str) -> str:
        """String: what the watcher knows of a post's routing (JSON: authorId, public, since, deleted), kept
        while the post exists and, once it is deleted, as a tombstone for REALTIME_POST_TOMBSTONE_SECONDS."""
        return f"{self.tag}:post:{post_id}"

    def room(self, room: str) -> str:
        return f"{self.tag}:room:{room}"

    @property
    def room_prefix(self) -> str:
        return f"{self.tag}:room:"
