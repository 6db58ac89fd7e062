"""watchers.mapping: change documents (shaped as PyMongo decodes them) to typed events, rooms and payloads.

Also the pieces it is built from: event ids (realtime.events) and bounded, JSON-safe payloads (watchers.payload).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import uuid
from typing import Any

import orjson
import pytest
from bson import Binary, Decimal128, Int64, ObjectId, Timestamp
from hypothesis import example, given, settings
from hypothesis import strategies as st

from realtime import events as ev
from realtime.events import EVENTS_PER_CHANGE, BadEventId, Counter, Event
from realtime.ids import id_text
from watchers.config import Fields, MappingConfig
from watchers.mapping import (
    SKIP_BAD_DOCUMENT,
    SKIP_BAD_ID,
    SKIP_NO_AUTHOR,
    SKIP_NO_POST,
    SKIP_NOT_WATCHED,
    SKIP_UNKNOWN_POST,
    SKIP_UNROUTABLE_DELETE,
    Mapped,
    PostInfo,
    Subject,
    combine,
    from_entry,
    images_missing,
    is_public,
    map_change,
    may_reach,
    post_entry,
    post_info,
    post_ref,
    public_query,
    subject,
)
from watchers.payload import bound, json_safe, pick

CFG = MappingConfig()
T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
WALL = dt.datetime(2023, 11, 14, 22, 13, 20, 123000)  # naive UTC, as PyMongo decodes a BSON date
TS = 1_700_000_000_123
TIME_PART = 7301444403200000000  # T0 << 32
AT = TIME_PART | 1  # the time part of change()'s default clusterTime
_MISSING: Any = object()

OID = ObjectId("65a1b2c3d4e5f60718293a4b")
HEX = "65a1b2c3d4e5f60718293a4b"


def change(op: str, coll: str, key: Any, *, full: Any = _MISSING, before: Any = _MISSING,
           updated: dict[str, Any] | None = None, removed: tuple[str, ...] = (),
           truncated: tuple[dict[str, Any], ...] = (), inc: int = 1) -> dict[str, Any]:
    """A change document the way PyMongo hands it over."""
    c: dict[str, Any] = {
        "_id": {"_data": "826553F0C0000000012B042C0100296E5A100461C1E8A5B3C24E9A8C3B0E1F2A3D4C5B46645F6964"},
        "operationType": op,
        "clusterTime": Timestamp(T0, inc),
        "wallTime": WALL,
        "ns": {"db": "app", "coll": coll},
        "documentKey": {"_id": key},
    }
    if op == "update":
        c["updateDescription"] = {"updatedFields": dict(updated or {}), "removedFields": list(removed),
                                  "truncatedArrays": list(truncated)}
    if full is not _MISSING:
        c["fullDocument"] = full
    if before is not _MISSING:
        c["fullDocumentBeforeChange"] = before
    return c


def eid(k: int, position: int = 0, inc: int = 1) -> str:
    return f"{TIME_PART | inc}-{position * EVENTS_PER_CHANGE + k}"


def summary(mapped: Mapped) -> list[tuple[str, tuple[str, ...]]]:
    return [(e.type, e.rooms) for e in mapped.events]


# -- posts -------------------------------------------------------------------------------------------------

def test_new_public_post_goes_to_public_author_and_each_hashtag() -> None:
    doc = {"_id": OID, "authorId": "u1", "title": "Hello", "text": "First post", "hashtags": ["#Python", "mongodb"],
           "createdAt": dt.datetime(2024, 1, 2, 3, 4, 5, 678000), "email": "a@example.com",
           "passwordHash": "$2b$12$secret", "likesCount": 3}
    mapped = map_change(change("insert", "posts", OID, full=doc, inc=7), 0, CFG)
    assert mapped.skipped is None
    assert mapped.events == [Event(
        id="7301444403200000007-0",
        type=ev.POST_CREATED,
        rooms=("public", "author:u1", "hashtag:python", "hashtag:mongodb"),
        data={"id": HEX, "authorId": "u1", "title": "Hello", "text": "First post",
              "hashtags": ["#Python", "mongodb"], "createdAt": "2024-01-02T03:04:05.678Z"},
        ts=TS,
    )]
    assert mapped.events[0].counter is None
    assert mapped.post_info == (HEX, PostInfo("u1", True, TIME_PART | 7, tags=("python", "mongodb")))
    assert mapped.index_set is None and mapped.index_del is None


def test_hashtags_are_normalised_deduplicated_and_invalid_ones_dropped() -> None:
    tags = ["#Python", "python", "  #MongoDB ", "##Web-Dev", "c++", "has space", "_under", "", "#", 42, None,
            {"t": 1}, "x" * 65, "y" * 64, "\u00dcn\u00efcode", "a-b_c", "caf\u00e9!"]
    doc = {"_id": "p1", "authorId": "u1", "hashtags": tags}
    mapped = map_change(change("insert", "posts", "p1", full=doc), 0, CFG)
    assert mapped.events[0].rooms == (
        "public", "author:u1", "hashtag:python", "hashtag:mongodb", "hashtag:web-dev", "hashtag:" + "y" * 64,
        "hashtag:\u00fcn\u00efcode", "hashtag:a-b_c",
    )
    # the payload keeps the tags as written: the allow-list copies values, routing normalises them
    assert mapped.events[0].data["hashtags"][:2] == ["#Python", "python"]


@pytest.mark.parametrize("tags", ["python", {"python": 1}, None, 5])
def test_hashtags_that_are_not_a_list_give_no_hashtag_room(tags: Any) -> None:
    doc = {"_id": "p1", "authorId": "u1", "hashtags": tags}
    mapped = map_change(change("insert", "posts", "p1", full=doc), 0, CFG)
    assert summary(mapped) == [(ev.POST_CREATED, ("public", "author:u1"))]


def test_only_the_first_hundred_hashtags_route() -> None:
    doc = {"_id": "p1", "authorId": "u1", "hashtags": [f"t{i}" for i in range(150)]}
    rooms = map_change(change("insert", "posts", "p1", full=doc), 0, CFG).events[0].rooms
    assert rooms == ("public", "author:u1", *(f"hashtag:t{i}" for i in range(100)))


@pytest.mark.parametrize("visibility", [None, "public"])
def test_post_without_visibility_or_public_is_public(visibility: Any) -> None:
    doc: dict[str, Any] = {"_id": "p1", "authorId": "u1"}
    if visibility is not None:
        doc["visibility"] = visibility
    mapped = map_change(change("insert", "posts", "p1", full=doc), 0, CFG)
    assert summary(mapped) == [(ev.POST_CREATED, ("public", "author:u1"))]
    assert mapped.post_info == ("p1", PostInfo("u1", True, AT))


@pytest.mark.parametrize("visibility", ["followers", "private", "Public", "", True, 1, ["public"], {"v": "public"}])
def test_non_public_post_goes_only_to_its_author(visibility: Any) -> None:
    doc = {"_id": "p1", "authorId": "u1", "visibility": visibility, "text": "for friends", "hashtags": ["python"]}
    mapped = map_change(change("insert", "posts", "p1", full=doc), 0, CFG)
    assert summary(mapped) == [(ev.POST_CREATED, ("user:u1",))]
    assert mapped.events[0].data["text"] == "for friends"
    assert mapped.post_info == ("p1", PostInfo("u1", False, AT, tags=("python",)))


def test_public_values_are_configurable() -> None:
    cfg = MappingConfig(public_values=("public", "everyone"))
    doc = {"_id": "p1", "authorId": "u1", "visibility": "everyone"}
    assert summary(map_change(change("insert", "posts", "p1", full=doc), 0, cfg)) == [
        (ev.POST_CREATED, ("public", "author:u1"))]
    doc["visibility"] = "friends"
    assert summary(map_change(change("insert", "posts", "p1", full=doc), 0, cfg)) == [
        (ev.POST_CREATED, ("user:u1",))]


def test_non_public_post_with_unusable_author_goes_nowhere() -> None:
    doc = {"_id": "p1", "authorId": "not a valid id", "visibility": "private", "text": "secret"}
    mapped = map_change(change("insert", "posts", "p1", full=doc), 0, CFG)
    assert mapped.events == [] and mapped.skipped == SKIP_NO_AUTHOR
    assert mapped.post_info == ("p1", PostInfo(None, False, AT))


def test_public_post_with_unusable_author_skips_the_author_room() -> None:
    doc = {"_id": "p1", "authorId": {"$oid": "x"}, "hashtags": ["go"]}
    mapped = map_change(change("insert", "posts", "p1", full=doc), 0, CFG)
    assert summary(mapped) == [(ev.POST_CREATED, ("public", "hashtag:go"))]
    assert mapped.events[0].data == {"id": "p1", "authorId": None, "hashtags": ["go"]}


def test_object_id_author_becomes_hex_in_rooms_and_payload() -> None:
    author = ObjectId("0123456789abcdef01234567")
    doc = {"_id": OID, "authorId": author}
    mapped = map_change(change("insert", "posts", OID, full=doc), 0, CFG)
    assert mapped.events[0].rooms == ("public", "author:0123456789abcdef01234567")
    assert mapped.events[0].data == {"id": HEX, "authorId": "0123456789abcdef01234567"}


def test_field_names_are_configurable() -> None:
    cfg = MappingConfig(fields=Fields(author_id="owner", hashtags="tags", visibility="audience"),
                        post_fields=("body", "audience"))
    doc = {"_id": "p1", "owner": "u9", "tags": ["Rust"], "body": "hi", "authorId": "ignored", "title": "not listed"}
    mapped = map_change(change("insert", "posts", "p1", full=doc), 0, cfg)
    assert summary(mapped) == [(ev.POST_CREATED, ("public", "author:u9", "hashtag:rust"))]
    assert mapped.events[0].data == {"id": "p1", "authorId": "u9", "body": "hi"}
    doc["audience"] = "circle"
    mapped = map_change(change("insert", "posts", "p1", full=doc), 0, cfg)
    assert summary(mapped) == [(ev.POST_CREATED, ("user:u9",))]


def test_insert_without_its_document_is_skipped_not_raised() -> None:
    """Regression: an insert change without fullDocument failed an assert instead of being skipped."""
    mapped = map_change(change("insert", "posts", "p1"), 0, CFG)
    assert mapped.events == [] and mapped.skipped == SKIP_BAD_DOCUMENT
    mapped = map_change(change("insert", "posts", "p1", full=None), 0, CFG)
    assert mapped.events == [] and mapped.skipped == SKIP_BAD_DOCUMENT


POST = {"_id": "p1", "authorId": "u1", "title": "T", "text": "new text", "visibility": "public",
        "email": "a@example.com", "passwordHash": "h", "stats": {"views": 3}}


KNOWN = PostInfo("u1", True)  # what the post index knew of POST
FEED = ("post:p1", "public", "author:u1")  # where an edit or delete of POST goes: its room and its feed rooms


def test_post_update_goes_to_the_post_room_with_allow_listed_fields_and_what_changed() -> None:
    c = change("update", "posts", "p1", full=POST, updated={"text": "new text", "email": "b@example.com"})
    mapped = map_change(c, 0, CFG, KNOWN)
    assert mapped.events == [Event(eid(0), ev.POST_UPDATED, FEED,
                                   {"id": "p1", "authorId": "u1", "title": "T", "text": "new text",
                                    "visibility": "public", "changed": ["text"]}, TS)]
    assert mapped.post_info is None  # routing unchanged: nothing new to remember
    # a pre-image tells the routing before the update as well as the index does (and teaches the index)
    mapped = map_change({**c, "fullDocumentBeforeChange": POST}, 0, CFG)
    assert summary(mapped) == [(ev.POST_UPDATED, FEED)]
    assert mapped.post_info == ("p1", PostInfo("u1", True, AT))


@pytest.mark.parametrize(("updated", "removed", "truncated"), [
    ({"email": "x@example.com"}, (), ()),
    ({"passwordHash": "h2", "stats.views": 4}, (), ()),
    ({}, ("email",), ()),
    ({}, (), ({"field": "followers", "newSize": 1},)),
    ({"textual": 1, "titles.0": "x"}, (), ()),  # names that only start like allow-listed ones
])
def test_post_update_touching_only_fields_outside_the_allow_list_publishes_nothing(
        updated: dict[str, Any], removed: tuple[str, ...], truncated: tuple[dict[str, Any], ...]) -> None:
    c = change("update", "posts", "p1", full=POST, updated=updated, removed=removed, truncated=truncated)
    mapped = map_change(c, 0, CFG, KNOWN)
    assert mapped.events == []
    assert mapped.skipped is None
    assert mapped.post_info is None


@pytest.mark.parametrize(("updated", "removed", "truncated", "changed"), [
    ({"media.0.url": "https://x"}, (), (), ["media"]),
    ({}, ("title",), (), ["title"]),
    ({}, (), ({"field": "hashtags", "newSize": 1},), ["hashtags"]),
    ({"updatedAt": dt.datetime(2024, 1, 1), "text": "a", "title": "b"}, (), (), ["title", "text", "updatedAt"]),
])
def test_post_update_reports_changed_top_level_fields_in_allow_list_order(
        updated: dict[str, Any], removed: tuple[str, ...], truncated: tuple[dict[str, Any], ...],
        changed: list[str]) -> None:
    c = change("update", "posts", "p1", full=POST, updated=updated, removed=removed, truncated=truncated)
    (event,) = map_change(c, 0, CFG, KNOWN).events
    assert event.type == ev.POST_UPDATED and event.rooms == FEED
    assert event.data["changed"] == changed


def test_update_of_a_non_public_post_goes_only_to_its_author() -> None:
    doc = {**POST, "visibility": "followers"}
    mapped = map_change(change("update", "posts", "p1", full=doc, updated={"text": "x"}), 0, CFG,
                        PostInfo("u1", False))
    assert summary(mapped) == [(ev.POST_UPDATED, ("user:u1",))]
    assert mapped.post_info is None


def test_update_whose_document_is_public_now_neither_goes_public_nor_makes_the_post_public() -> None:
    """Regression: an update of a private post was routed, and the post remembered, as its looked-up document
    (updateLookup: the post as it is now, made public since) said, so what was written to the post while it
    was still private (this update, then comments) went to post:{id}."""
    doc = {**POST, "visibility": "public", "text": "written while private"}
    mapped = map_change(change("update", "posts", "p1", full=doc, updated={"text": "written while private"}), 0,
                        CFG, PostInfo("u1", False))
    assert summary(mapped) == [(ev.POST_UPDATED, ("user:u1",))]
    assert mapped.post_info is None
    c = change("update", "posts", "p1", full=doc, updated={"text": "x"}, before={**POST, "visibility": "private"})
    assert summary(map_change(c, 0, CFG)) == [(ev.POST_UPDATED, ("user:u1",))]
    assert map_change(c, 0, CFG).post_info == ("p1", PostInfo("u1", False, AT))


def test_update_whose_document_is_private_now_goes_only_to_its_author() -> None:
    """Public at the update, private now: the document (perhaps edited since, while private) stays with the
    author, and the post index still learns that the post was public at the update."""
    doc = {**POST, "visibility": "private", "text": "written while private"}
    mapped = map_change(change("update", "posts", "p1", full=doc, updated={"title": "T"}), 0, CFG, KNOWN)
    assert summary(mapped) == [(ev.POST_UPDATED, ("user:u1",))]
    assert mapped.post_info is None
    c = change("update", "posts", "p1", full=doc, updated={"title": "T"}, before=POST)
    assert summary(map_change(c, 0, CFG)) == [(ev.POST_UPDATED, ("user:u1",))]
    assert map_change(c, 0, CFG).post_info == ("p1", PostInfo("u1", True, AT))


def test_update_with_nothing_known_before_it_goes_only_to_its_author() -> None:
    """Regression: an update of a post the watcher knew nothing of was routed by its looked-up document alone."""
    c = change("update", "posts", "p1", full=POST, updated={"text": "new text"})
    mapped = map_change(c, 0, CFG)
    assert summary(mapped) == [(ev.POST_UPDATED, ("user:u1",))]
    assert mapped.post_info is None
    mapped = map_change(change("update", "posts", "p1", full=None, updated={"text": "x"}), 0, CFG)
    assert mapped.events == [] and mapped.skipped == SKIP_UNKNOWN_POST and mapped.post_info is None
    # the update itself sets both routing fields: the routing after it is known
    c = change("update", "posts", "p1", full=None, updated={"visibility": "public", "authorId": "u3", "text": "x"})
    mapped = map_change(c, 0, CFG)
    assert summary(mapped) == [(ev.POST_UPDATED, ("post:p1", "public", "author:u3"))]
    assert mapped.post_info == ("p1", PostInfo("u3", True, AT, tags=None))  # its hashtags are unknown


def test_update_routes_by_the_post_image_not_by_what_was_known() -> None:
    doc = {**POST, "visibility": "private"}
    c = change("update", "posts", "p1", full=doc, updated={"visibility": "private"},
               before={**POST, "visibility": "public"})
    mapped = map_change(c, 0, CFG, PostInfo("u1", True))
    assert summary(mapped) == [(ev.POST_UPDATED, ("user:u1",)), (ev.POST_DELETED, FEED)]
    assert mapped.events[0].data["changed"] == ["visibility"]
    assert mapped.events[1].data == {"id": "p1"}
    assert mapped.post_info == ("p1", PostInfo("u1", False, AT))


def test_update_changing_only_the_author_publishes_and_reroutes() -> None:
    cfg = MappingConfig(post_fields=("text",))
    doc = {"_id": "p1", "authorId": "u2", "text": "t", "visibility": "private"}
    mapped = map_change(change("update", "posts", "p1", full=doc, updated={"authorId": "u2"}), 0, cfg,
                        PostInfo("u1", False, 5))
    assert mapped.events == [Event(eid(0), ev.POST_UPDATED, ("user:u2",),
                                   {"id": "p1", "authorId": "u2", "text": "t", "changed": []}, TS)]
    assert mapped.post_info == ("p1", PostInfo("u2", False, AT))


def test_update_without_post_image_uses_what_the_update_set_and_the_known_routing() -> None:
    c = change("update", "posts", "p1", full=None, updated={"text": "edited", "email": "e", "media.0": "m"})
    mapped = map_change(c, 0, CFG, PostInfo("u1", True))
    assert mapped.events == [Event(eid(0), ev.POST_UPDATED, FEED,
                                   {"id": "p1", "authorId": "u1", "text": "edited", "changed": ["text", "media"]}, TS)]
    assert mapped.post_info is None  # nothing learnt about routing
    c = change("update", "posts", "p1", updated={"text": "edited"})  # fullDocument absent altogether
    assert summary(map_change(c, 0, CFG, PostInfo("u1", False))) == [(ev.POST_UPDATED, ("user:u1",))]


def test_update_without_post_image_that_makes_the_post_private_goes_only_to_its_author() -> None:
    """Regression: without a post-image the update was routed by the pre-image (or the known routing) and so
    published the now-private post's new text to post:{id}."""
    c = change("update", "posts", "p1", full=None, updated={"visibility": "private", "text": "secret"},
               before={"_id": "p1", "authorId": "u1", "visibility": "public", "text": "old"})
    mapped = map_change(c, 0, CFG, PostInfo("u1", True))
    assert mapped.events == [Event(eid(0), ev.POST_UPDATED, ("user:u1",),
                                   {"id": "p1", "authorId": "u1", "text": "secret", "visibility": "private",
                                    "changed": ["text", "visibility"]}, TS),
                             Event(eid(1), ev.POST_DELETED, FEED, {"id": "p1"}, TS)]  # gone from the feed
    assert mapped.post_info == ("p1", PostInfo("u1", False, AT))
    # set by a dotted path: visibility is now a subdocument, which is not a public value
    c = change("update", "posts", "p1", full=None, updated={"visibility.level": "x", "text": "secret"})
    assert summary(map_change(c, 0, CFG, PostInfo("u1", True))) == [(ev.POST_UPDATED, ("user:u1",)),
                                                                    (ev.POST_DELETED, FEED)]


def test_update_without_post_image_that_makes_the_post_public_goes_to_its_room() -> None:
    c = change("update", "posts", "p1", full=None, updated={"visibility": "public"})
    mapped = map_change(c, 0, CFG, PostInfo("u1", False, tags=("cats",)))
    assert summary(mapped) == [(ev.POST_UPDATED, (*FEED, "hashtag:cats"))]  # in the feed now
    assert mapped.post_info == ("p1", PostInfo("u1", True, AT, tags=("cats",)))
    c = change("update", "posts", "p1", full=None, removed=("visibility",))  # absent: public by default
    mapped = map_change(c, 0, CFG, PostInfo("u1", False))
    assert summary(mapped) == [(ev.POST_UPDATED, FEED)]
    assert mapped.events[0].data == {"id": "p1", "authorId": "u1", "changed": ["visibility"]}
    strict = MappingConfig(missing_visibility_public=False)
    assert summary(map_change(c, 0, strict, PostInfo("u1", False))) == [(ev.POST_UPDATED, ("user:u1",))]


def test_update_without_post_image_that_changes_the_author_of_a_private_post() -> None:
    c = change("update", "posts", "p1", full=None, updated={"authorId": "u2", "text": "t"})
    mapped = map_change(c, 0, CFG, PostInfo("u1", False))
    assert summary(mapped) == [(ev.POST_UPDATED, ("user:u2",))]
    assert mapped.events[0].data["authorId"] == "u2"
    assert mapped.post_info == ("p1", PostInfo("u2", False, AT))


def test_replace_publishes_every_allow_listed_field_routed_by_the_new_document() -> None:
    doc = {"_id": "p1", "authorId": "u1", "text": "replaced", "secret": "s"}
    mapped = map_change(change("replace", "posts", "p1", full=doc), 0, CFG)
    assert mapped.events == [Event(eid(0), ev.POST_UPDATED, FEED,
                                   {"id": "p1", "authorId": "u1", "text": "replaced",
                                    "changed": list(CFG.post_fields)}, TS)]
    assert mapped.post_info == ("p1", PostInfo("u1", True, AT))
    assert map_change(change("replace", "posts", "p1", full=doc), 0, CFG, PostInfo("u1", True, 5)).post_info is None
    doc["visibility"] = "private"
    c = change("replace", "posts", "p1", full=doc, before={"_id": "p1", "authorId": "u1"})
    mapped = map_change(c, 0, CFG, PostInfo("u1", True, 5))
    assert summary(mapped) == [(ev.POST_UPDATED, ("user:u1",)), (ev.POST_DELETED, FEED)]
    assert mapped.post_info == ("p1", PostInfo("u1", False, AT))


def test_replace_with_a_pre_image_lists_as_changed_only_what_differs() -> None:
    """Regression: a replaceOne listed every allow-listed field as changed, fields neither version had
    included, although the change carried the post before it (pre-images on)."""
    old = {"_id": "p1", "authorId": "u1", "title": "T", "text": "old", "media": [1, {"a": 1}], "createdAt": 5,
           "updatedAt": 1, "secret": "s"}
    new = {"_id": "p1", "authorId": "u1", "text": "new", "media": [1, {"a": 1}], "createdAt": 5.0,
           "hashtags": ["x"], "updatedAt": 1, "secret": "t"}
    (event,) = map_change(change("replace", "posts", "p1", full=new, before=old), 0, CFG, KNOWN).events
    # text edited, title removed, hashtags added, createdAt now a double; visibility neither had
    assert event.data["changed"] == ["title", "text", "hashtags", "createdAt"]
    # what a client sees of an unchanged field: the same value, with its type
    reordered = {**new, "media": [1, {"a": 1}]}
    assert map_change(change("replace", "posts", "p1", full=reordered, before=new), 0, CFG, KNOWN).events == []


def test_replace_changing_nothing_allow_listed_publishes_only_a_routing_change() -> None:
    old = {"_id": "p1", "authorId": "u1", "text": "same", "secret": "a"}
    mapped = map_change(change("replace", "posts", "p1", full={**old, "secret": "b"}, before=old), 0, CFG)
    assert mapped.events == [] and mapped.skipped is None
    assert mapped.post_info == ("p1", PostInfo("u1", True, AT))  # the pre-image taught the index
    moved = map_change(change("replace", "posts", "p1", full={**old, "authorId": "u2"}, before=old), 0, CFG)
    assert [(e.type, e.data["changed"], e.data["authorId"]) for e in moved.events] == [(ev.POST_UPDATED, [], "u2")]


def test_replace_without_a_pre_image_lists_every_allow_listed_field_as_changed() -> None:
    """Without the post before it, any allow-listed field may have changed or been removed."""
    doc = {"_id": "p1", "authorId": "u1", "text": "replaced"}
    (event,) = map_change(change("replace", "posts", "p1", full=doc, before=None), 0, CFG, KNOWN).events
    assert event.data["changed"] == list(CFG.post_fields)


def test_post_delete_goes_to_the_post_room_and_its_feed_rooms_with_only_its_id() -> None:
    c = change("delete", "posts", "p1", before={**POST, "text": "gone"})
    mapped = map_change(c, 0, CFG)
    assert mapped.events == [Event(eid(0), ev.POST_DELETED, FEED, {"id": "p1"}, TS)]
    assert mapped.post_info == ("p1", PostInfo("u1", True, AT, deleted=True))  # a tombstone
    assert map_change(c, 0, CFG, PostInfo("u1", True, 5)).post_info == ("p1", PostInfo("u1", True, 5, deleted=True))


def test_delete_of_a_non_public_post_goes_only_to_its_author() -> None:
    c = change("delete", "posts", "p1", before={"_id": "p1", "authorId": "u1", "visibility": "private"})
    assert summary(map_change(c, 0, CFG)) == [(ev.POST_DELETED, ("user:u1",))]
    # no pre-image: routed by what the watcher knew of the post
    c = change("delete", "posts", "p1")
    mapped = map_change(c, 0, CFG, PostInfo("u1", False, 5))
    assert summary(mapped) == [(ev.POST_DELETED, ("user:u1",))]
    assert mapped.post_info == ("p1", PostInfo("u1", False, 5, deleted=True))
    mapped = map_change(c, 0, CFG, PostInfo(None, False))
    assert mapped.events == [] and mapped.skipped == SKIP_NO_AUTHOR


def test_delete_of_a_post_nothing_is_known_of_publishes_nothing() -> None:
    """Regression: a delete with no pre-image of a post the watcher did not know went to post:{id}."""
    c = change("delete", "posts", "p1")
    mapped = map_change(c, 0, CFG, None)
    assert mapped.events == [] and mapped.skipped == SKIP_UNKNOWN_POST and mapped.post_info is None
    # known only from after the delete (say, a deep replay reading the index as it is now): not known
    mapped = map_change(c, 0, CFG, PostInfo("u1", True, AT + 1))
    assert mapped.events == [] and mapped.skipped == SKIP_UNKNOWN_POST
    # the author known, the visibility not (read as of now): its author only, and the tombstone says so
    mapped = map_change(c, 0, CFG, PostInfo("u1", None))
    assert summary(mapped) == [(ev.POST_DELETED, ("user:u1",))]
    assert mapped.post_info == ("p1", PostInfo("u1", None, 0, deleted=True))


TAGGED = {**POST, "hashtags": ["#Cats", "dogs"]}
TAGGED_FEED = (*FEED, "hashtag:cats", "hashtag:dogs")


def test_edits_and_deletes_of_a_public_post_reach_the_rooms_its_creation_went_to() -> None:
    """Regression: post:updated and post:deleted of a public post went to post:{id} only, so a feed showing it
    (public, author:{id}, hashtag:{tag}) never heard that it was edited or deleted."""
    created = map_change(change("insert", "posts", "p1", full=TAGGED), 0, CFG)
    assert created.events[0].rooms == TAGGED_FEED[1:]
    known = created.post_info[1] if created.post_info else None
    assert known == PostInfo("u1", True, AT, tags=("cats", "dogs"))
    edit = change("update", "posts", "p1", full=TAGGED, updated={"text": "edited"}, inc=2)
    assert summary(map_change(edit, 0, CFG, known)) == [(ev.POST_UPDATED, TAGGED_FEED)]
    edit = change("update", "posts", "p1", full=None, updated={"text": "edited"}, inc=2)  # without post-image
    assert summary(map_change(edit, 0, CFG, known)) == [(ev.POST_UPDATED, TAGGED_FEED)]
    replace = change("replace", "posts", "p1", full={**TAGGED, "text": "replaced"}, inc=2)
    assert summary(map_change(replace, 0, CFG, known)) == [(ev.POST_UPDATED, TAGGED_FEED)]
    # deleted: with the post before it, or by what the post index knew of it
    for before in (TAGGED, _MISSING):
        delete = change("delete", "posts", "p1", before=before, inc=2)
        mapped = map_change(delete, 0, CFG, known)
        assert mapped.events == [Event(eid(0, inc=2), ev.POST_DELETED, TAGGED_FEED, {"id": "p1"}, TS)]
        assert mapped.post_info is not None and mapped.post_info[1].deleted


@pytest.mark.parametrize("how", ["updated", "removed", "pre-image"])
def test_an_edit_of_the_hashtags_reaches_the_old_and_the_new_hashtag_rooms(how: str) -> None:
    """A feed of a tag the post leaves hears of it (and may drop the post); one of a tag it gains hears of it
    (and may show it); the index learns the new tags."""
    known = PostInfo("u1", True, 5, tags=("cats", "dogs"))
    if how == "removed":
        c = change("update", "posts", "p1", full=None, removed=("hashtags",))
        new: tuple[str, ...] = ()
    else:
        c = change("update", "posts", "p1", full={**TAGGED, "hashtags": ["dogs", "Birds"]},
                   updated={"hashtags": ["dogs", "Birds"]}, before=TAGGED if how == "pre-image" else _MISSING)
        new = ("dogs", "birds")
    mapped = map_change(c, 0, CFG, None if how == "pre-image" else known)
    assert summary(mapped) == [(ev.POST_UPDATED, (*FEED, "hashtag:cats", "hashtag:dogs", *(
        ["hashtag:birds"] if new else [])))]
    assert mapped.events[0].data["changed"] == ["hashtags"]
    assert mapped.post_info == ("p1", PostInfo("u1", True, AT, tags=new))


def test_hashtags_changed_below_the_top_level_are_read_from_the_document() -> None:
    known = PostInfo("u1", True, 5, tags=("cats",))
    c = change("update", "posts", "p1", full={**POST, "hashtags": ["cats", "dogs"]}, updated={"hashtags.1": "dogs"})
    mapped = map_change(c, 0, CFG, known)
    assert summary(mapped) == [(ev.POST_UPDATED, (*FEED, "hashtag:cats", "hashtag:dogs"))]
    # the document may be later than the update (updateLookup): the index keeps the tags as unknown
    assert mapped.post_info == ("p1", PostInfo("u1", True, AT, tags=None))
    c = change("update", "posts", "p1", full=None, updated={"hashtags.1": "dogs"})  # no document: the old ones
    assert summary(map_change(c, 0, CFG, known)) == [(ev.POST_UPDATED, (*FEED, "hashtag:cats"))]


def test_an_edit_that_changes_the_author_reaches_both_authors_followers() -> None:
    known = PostInfo("u1", True, 5, tags=("cats",))
    c = change("update", "posts", "p1", full=None, updated={"authorId": "u2"})
    mapped = map_change(c, 0, CFG, known)
    assert summary(mapped) == [(ev.POST_UPDATED, ("post:p1", "public", "author:u1", "author:u2", "hashtag:cats"))]


def test_a_post_made_private_is_announced_as_deleted_where_it_was_public_and_nowhere_else() -> None:
    """Its id only, in the rooms of the post as it was: not its new content, not its new hashtags or author."""
    known = PostInfo("u1", True, 5, tags=("cats", "dogs"))
    secret = {**TAGGED, "visibility": "private", "text": "secret", "hashtags": ["secret"], "authorId": "u1"}
    for c in (change("update", "posts", "p1", full=secret, updated={"visibility": "private", "text": "secret",
                                                                    "hashtags": ["secret"]}),
              change("update", "posts", "p1", full=None, updated={"visibility": "private", "hashtags": ["secret"]}),
              change("replace", "posts", "p1", full=secret),
              change("replace", "posts", "p1", full=secret, before=TAGGED)):
        mapped = map_change(c, 0, CFG, known if "fullDocumentBeforeChange" not in c else None)
        assert summary(mapped) == [(ev.POST_UPDATED, ("user:u1",)), (ev.POST_DELETED, TAGGED_FEED)]
        assert mapped.events[1].data == {"id": "p1"}
        assert mapped.post_info == ("p1", PostInfo("u1", False, AT, tags=("secret",)))


def test_a_private_post_made_public_reaches_only_its_new_feed_rooms() -> None:
    """The hashtags it had while private were never public: their rooms do not hear of it."""
    known = PostInfo("u1", False, 5, tags=("secret",))
    c = change("update", "posts", "p1", full={**TAGGED, "visibility": "public"},
               updated={"visibility": "public", "hashtags": ["#Cats", "dogs"]})
    assert summary(map_change(c, 0, CFG, known)) == [(ev.POST_UPDATED, TAGGED_FEED)]
    c = change("replace", "posts", "p1", full=TAGGED, before={**TAGGED, "visibility": "private", "hashtags": ["x"]})
    assert summary(map_change(c, 0, CFG)) == [(ev.POST_UPDATED, TAGGED_FEED)]


def test_an_edit_of_a_post_public_then_private_now_stays_with_its_author_and_deletes_nothing() -> None:
    """updateLookup: the document is the post as it is now, made private since; the change that made it
    private announces the deletion, not this one."""
    known = PostInfo("u1", True, 5, tags=("cats",))
    c = change("update", "posts", "p1", full={**POST, "visibility": "private"}, updated={"text": "x"})
    assert summary(map_change(c, 0, CFG, known)) == [(ev.POST_UPDATED, ("user:u1",))]


@pytest.mark.parametrize("key", ["has space", "x" * 81, "y" * 200, "a/b", "", {"a": 1}, ["p1"], None, True, 1.5,
                                 "\u00e9t\u00e9"])
@pytest.mark.parametrize("op", ["insert", "update", "replace", "delete"])
def test_post_whose_id_cannot_be_a_room_is_skipped(key: Any, op: str) -> None:
    doc = {"_id": key, "authorId": "u1", "text": "t"}
    c = change(op, "posts", key, full=None if op == "delete" else doc, updated={"text": "t"})
    mapped = map_change(c, 0, CFG)
    assert mapped.events == [] and mapped.skipped == SKIP_BAD_ID and mapped.post_info is None


def test_integer_ids_are_usable() -> None:
    mapped = map_change(change("insert", "posts", 42, full={"_id": 42, "authorId": 7}), 0, CFG)
    assert mapped.events[0].rooms == ("public", "author:7")
    assert mapped.events[0].data == {"id": "42", "authorId": "7"}


# -- likes -------------------------------------------------------------------------------------------------

LIKE = {"_id": "l1", "postId": "p1", "userId": "u2", "createdAt": dt.datetime(2024, 1, 1), "ip": "10.0.0.1"}


def test_like_by_someone_else_goes_to_the_post_and_notifies_its_author() -> None:
    mapped = map_change(change("insert", "likes", "l1", full=LIKE), 3, CFG, PostInfo("u1", True))
    assert mapped.skipped is None
    assert mapped.events == [
        Event(eid(0, 3), ev.POST_LIKED, ("post:p1",), {"likes": 0, "id": "l1", "postId": "p1", "userId": "u2"}, TS),
        Event(eid(1, 3), ev.NOTIFICATION_NEW, ("user:u1",),
              {"kind": "like", "postId": "p1", "fromUserId": "u2", "likeId": "l1"}, TS),
    ]
    liked = mapped.events[0]
    assert next(iter(liked.data)) == "likes"
    assert liked.counter == Counter("p1", 1, "likes")
    assert mapped.events[1].counter is None
    assert mapped.index_set == ("like", "l1", {"postId": "p1", "userId": "u2"})
    assert mapped.index_del is None and mapped.post_info is None


def test_liking_your_own_post_notifies_nobody() -> None:
    doc = {**LIKE, "userId": "u1"}
    mapped = map_change(change("insert", "likes", "l1", full=doc), 0, CFG, PostInfo("u1", True))
    assert summary(mapped) == [(ev.POST_LIKED, ("post:p1",))]


REACTIONS = [
    ("like", change("insert", "likes", "l1", full=LIKE)),
    ("like", change("delete", "likes", "l1", before=LIKE)),
    ("comment", change("insert", "comments", "c1", full={"_id": "c1", "postId": "p1", "userId": "u2", "text": "t"})),
    ("comment", change("update", "comments", "c1", full={"_id": "c1", "postId": "p1", "userId": "u2", "text": "t"},
                       updated={"text": "t"})),
    ("comment", change("delete", "comments", "c1", before={"_id": "c1", "postId": "p1", "userId": "u2", "text": "t"})),
]


@pytest.mark.parametrize(("kind", "c"), REACTIONS,
                         ids=[f"{c['ns']['coll']}-{c['operationType']}" for _, c in REACTIONS])
def test_reaction_to_a_post_of_unknown_visibility_never_goes_public(kind: str, c: dict[str, Any]) -> None:
    """Regression: a like or comment of a post the watcher knew nothing of (deleted, or never seen) went to
    post:{id}, with the liker's or commenter's id and the comment's text."""
    for known in (None, PostInfo(None, None), PostInfo("u1", True, AT + 1)):  # nothing; nothing as of the change
        mapped = map_change(c, 0, CFG, known)
        assert mapped.events == [] and mapped.skipped == SKIP_UNKNOWN_POST
        # the index of likes and comments still learns and forgets, so later changes can be routed
        ident = "l1" if kind == "like" else "c1"
        if c["operationType"] == "delete":
            assert mapped.index_del == (kind, ident) and mapped.index_set is None
        else:
            assert mapped.index_set == (kind, ident, {"postId": "p1", "userId": "u2"}) and mapped.index_del is None
    mapped = map_change(c, 0, CFG, PostInfo(None, False))
    assert mapped.events == [] and mapped.skipped == SKIP_NO_AUTHOR
    # the author known, the visibility not: the author alone hears of it
    mapped = map_change(c, 0, CFG, PostInfo("u1", None))
    assert mapped.events and all(e.rooms == ("user:u1",) for e in mapped.events) and mapped.skipped is None
    assert mapped.events[0].counter == (Counter("p1", 1 if c["operationType"] == "insert" else -1)
                                        if kind == "like" else None)


def test_knowledge_from_after_a_change_says_nothing_of_it() -> None:
    like = change("insert", "likes", "l1", full=LIKE)
    assert summary(map_change(like, 0, CFG, PostInfo("u1", True, AT))) == [
        (ev.POST_LIKED, ("post:p1",)), (ev.NOTIFICATION_NEW, ("user:u1",))]
    assert map_change(like, 0, CFG, PostInfo("u1", True, AT + 1)).events == []
    assert PostInfo("u1", True, 5).as_of(4) is None and PostInfo("u1", True, 5).as_of(5) == PostInfo("u1", True, 5)


def test_like_without_a_usable_user_notifies_nobody() -> None:
    doc = {**LIKE, "userId": ["u2"]}
    mapped = map_change(change("insert", "likes", "l1", full=doc), 0, CFG, PostInfo("u1", True))
    assert summary(mapped) == [(ev.POST_LIKED, ("post:p1",))]
    assert mapped.events[0].data == {"likes": 0, "id": "l1", "postId": "p1", "userId": None}


def test_like_of_a_non_public_post_goes_only_to_its_author() -> None:
    mapped = map_change(change("insert", "likes", "l1", full=LIKE), 0, CFG, PostInfo("u1", False))
    assert summary(mapped) == [(ev.POST_LIKED, ("user:u1",)), (ev.NOTIFICATION_NEW, ("user:u1",))]
    mapped = map_change(change("insert", "likes", "l1", full=LIKE), 0, CFG, PostInfo(None, False))
    assert mapped.events == []


def test_unlike_with_pre_image_goes_to_the_post_with_a_negative_counter() -> None:
    mapped = map_change(change("delete", "likes", "l1", before=LIKE), 0, CFG, PostInfo("u1", True))
    assert mapped.events == [
        Event(eid(0), ev.POST_UNLIKED, ("post:p1",), {"likes": 0, "id": "l1", "postId": "p1", "userId": "u2"}, TS)]
    assert next(iter(mapped.events[0].data)) == "likes"
    assert mapped.events[0].counter == Counter("p1", -1)
    assert mapped.index_del == ("like", "l1") and mapped.index_set is None


def test_unlike_without_pre_image_is_routed_by_the_remembered_index_entry() -> None:
    remembered = {"postId": "p1", "userId": "u2"}
    mapped = map_change(change("delete", "likes", "l1"), 0, CFG, PostInfo("u1", False), remembered)
    assert mapped.events == [
        Event(eid(0), ev.POST_UNLIKED, ("user:u1",), {"likes": 0, "id": "l1", "postId": "p1", "userId": "u2"}, TS)]
    assert mapped.events[0].counter == Counter("p1", -1)
    assert mapped.index_del == ("like", "l1")


def test_unlike_with_neither_pre_image_nor_index_entry_is_unroutable() -> None:
    for c in (change("delete", "likes", "l1"), change("delete", "likes", "l1", before=None)):
        mapped = map_change(c, 0, CFG, None, None)
        assert mapped.events == []
        assert mapped.skipped == SKIP_UNROUTABLE_DELETE
        assert mapped.index_del == ("like", "l1")


def test_remembered_entries_route_with_configured_field_names() -> None:
    """Regression: the index entry is stored as {"postId", "userId"} but was read with the configured field
    names, so with other names an unlike without pre-image was skipped and the like count never went down."""
    cfg = MappingConfig(fields=Fields(post_id="post_id", user_id="user_id"))
    liked = map_change(change("insert", "likes", "l1", full={"_id": "l1", "post_id": "p1", "user_id": "u2"}), 0, cfg,
                       PostInfo("u1", True))
    assert liked.index_set == ("like", "l1", {"postId": "p1", "userId": "u2"})
    remembered = liked.index_set[2]
    sub = subject(change("delete", "likes", "l1"), cfg, remembered)
    assert sub == Subject("like", "l1", "p1", "u2", remembered)
    mapped = map_change(change("delete", "likes", "l1"), 0, cfg, PostInfo("u1", True), remembered)
    assert summary(mapped) == [(ev.POST_UNLIKED, ("post:p1",))]
    assert mapped.events[0].counter == Counter("p1", -1)


@pytest.mark.parametrize("op", ["update", "replace"])
def test_likes_are_not_edited(op: str) -> None:
    mapped = map_change(change(op, "likes", "l1", full=LIKE, updated={"postId": "p2"}), 0, CFG, PostInfo("u1", True))
    assert mapped.events == [] and mapped.skipped == SKIP_BAD_DOCUMENT
    assert mapped.index_set is None and mapped.index_del is None


@pytest.mark.parametrize("post_id", [None, {"$oid": HEX}, ["p1"], "has space", "z" * 200, 1.5, True])
@pytest.mark.parametrize("coll", ["likes", "comments"])
def test_reaction_without_a_usable_post_id_is_skipped(post_id: Any, coll: str) -> None:
    doc: dict[str, Any] = {"_id": "r1", "userId": "u2", "text": "hi"}
    if post_id is not None:
        doc["postId"] = post_id
    mapped = map_change(change("insert", coll, "r1", full=doc), 0, CFG, PostInfo("u1", True))
    assert mapped.events == [] and mapped.skipped == SKIP_NO_POST
    assert mapped.index_set is None and mapped.index_del is None
    kind = "like" if coll == "likes" else "comment"
    mapped = map_change(change("delete", coll, "r1", before=doc), 0, CFG, None)
    assert mapped.events == [] and mapped.skipped == SKIP_NO_POST and mapped.index_del == (kind, "r1")


@pytest.mark.parametrize("coll", ["likes", "comments"])
def test_reaction_whose_id_cannot_be_a_room_id_is_skipped(coll: str) -> None:
    doc = {"_id": "bad id", "postId": "p1", "userId": "u2"}
    mapped = map_change(change("insert", coll, "bad id", full=doc), 0, CFG, PostInfo("u1", True))
    assert mapped.events == [] and mapped.skipped == SKIP_BAD_ID and mapped.index_set is None


def test_object_id_post_ids_route_as_hex() -> None:
    doc = {"_id": ObjectId("0123456789abcdef01234567"), "postId": OID, "userId": ObjectId("ffffffffffffffffffffffff")}
    mapped = map_change(change("insert", "likes", doc["_id"], full=doc), 0, CFG, PostInfo("u1", True))
    assert mapped.events[0].rooms == (f"post:{HEX}",)
    assert mapped.events[0].data == {"likes": 0, "id": "0123456789abcdef01234567", "postId": HEX,
                                     "userId": "ffffffffffffffffffffffff"}
    assert mapped.events[0].counter == Counter(HEX, 1)
    assert mapped.events[1].data["fromUserId"] == "ffffffffffffffffffffffff"



@pytest.mark.parametrize(("one", "other"), [(OID, HEX), (5, "5"), (Int64(5), "5"), (-3, "-3")])
def test_ids_of_different_types_never_share_a_room_a_counter_or_an_index_entry(one: Any, other: Any) -> None:
    """Regression: ObjectId("65a1...") and the string "65a1...", or 5 and "5", had one text: one post:{id}
    room, one like counter, one post index entry, one user:{id} room, so a private post's events could reach
    the other post's room and its author's notifications the other user's."""
    def routed(post_id: Any, author: Any, public: bool) -> tuple[Mapped, Mapped, Mapped]:
        doc = {"_id": post_id, "authorId": author, "text": "t", "visibility": "public" if public else "private"}
        created = map_change(change("insert", "posts", post_id, full=doc), 0, CFG)
        assert created.post_info is not None
        info = created.post_info[1]
        like = {"_id": f"l-{type(post_id).__name__}", "postId": post_id, "userId": "u9"}
        liked = map_change(change("insert", "likes", like["_id"], full=like), 0, CFG, info)
        comment = {"_id": f"c-{type(post_id).__name__}", "postId": post_id, "userId": "u9", "text": "hello"}
        commented = map_change(change("insert", "comments", comment["_id"], full=comment), 0, CFG, info)
        return created, liked, commented

    private = routed(one, one, public=False)
    public = routed(other, other, public=True)
    for a, b in zip(private, public, strict=True):
        assert not {r for e in a.events for r in e.rooms} & {r for e in b.events for r in e.rooms}, (a, b)
        assert {e.data.get("id") for e in a.events[:1]}.isdisjoint({e.data.get("id") for e in b.events[:1]})
    assert private[0].post_info is not None and public[0].post_info is not None
    assert private[0].post_info[0] != public[0].post_info[0]  # the post index entries
    assert private[0].post_info[1].author_id != public[0].post_info[1].author_id
    assert private[1].events[0].counter != public[1].events[0].counter  # the like counters
    assert private[1].index_set is not None and public[1].index_set is not None
    assert private[1].index_set[2]["postId"] != public[1].index_set[2]["postId"]
    assert public[1].events[1].rooms == (f"user:~{other}",)  # the notification of the string id's author


def test_ids_in_index_entries_are_read_back_as_they_were_written() -> None:
    """An entry holds ids' texts: the text of an ObjectId stays the ObjectId's, a marked string's stays its own."""
    for post_id, user_id in ((HEX, "~5"), ("~" + HEX, "5"), ("p1", "alice")):
        remembered = {"postId": post_id, "userId": user_id}
        assert subject(change("delete", "likes", "l1"), CFG, remembered) == Subject("like", "l1", post_id, user_id,
                                                                                    remembered)
        mapped = map_change(change("delete", "likes", "l1"), 0, CFG, PostInfo(user_id, True), remembered)
        assert summary(mapped) == [(ev.POST_UNLIKED, (f"post:{post_id}",))]
        assert mapped.events[0].counter == Counter(post_id, -1)
        entry = post_entry(PostInfo(user_id, False, 3))
        assert from_entry(orjson.loads(orjson.dumps(entry))) == PostInfo(user_id, False, 3)
    assert subject(change("delete", "likes", "l1"), CFG, {"postId": "~alice", "userId": "a b"}) == Subject(
        "like", "l1", None, None, {"postId": "~alice", "userId": "a b"})
    assert from_entry({**post_entry(PostInfo("u1", True)), "authorId": "~alice"}) is None


@pytest.mark.parametrize("name", ["id", "authorId", "postId", "userId"])
def test_an_allow_listed_field_never_replaces_an_id_of_the_payload(name: str) -> None:
    """Regression: with a field named like one of the payload's ids in the allow-list, the document's value (an
    ObjectId's hex digits, a string that reads as one) replaced the id's text, naming another post or user."""
    cfg = MappingConfig(post_fields=("text", name), comment_fields=("text", name))
    post = {"_id": HEX, "authorId": HEX, "text": "t", "id": OID, "postId": OID, "userId": "5"}
    created = map_change(change("insert", "posts", HEX, full=post), 0, cfg)
    extra = {} if name in ("id", "authorId") else {name: json_safe(post[name], max_string=99, max_depth=3)}
    assert created.events[0].data == {"id": "~" + HEX, "authorId": "~" + HEX, "text": "t", **extra}
    comment = {"_id": "c1", "postId": HEX, "userId": "5", "text": "t", "id": OID, "authorId": OID}
    added = map_change(change("insert", "comments", "c1", full=comment), 0, cfg, PostInfo("u1", True))
    extra = {} if name in ("id", "postId", "userId") else {name: HEX}
    assert added.events[0].data == {"id": "c1", "postId": "~" + HEX, "userId": "~5", "text": "t", **extra}


# -- comments ----------------------------------------------------------------------------------------------

COMMENT = {"_id": "c1", "postId": "p1", "userId": "u2", "text": "Nice!", "createdAt": dt.datetime(2024, 3, 1, 12),
           "email": "u2@example.com", "passwordHash": "h", "ip": "10.0.0.2"}


def test_comment_by_someone_else_goes_to_the_post_and_notifies_its_author() -> None:
    mapped = map_change(change("insert", "comments", "c1", full=COMMENT), 1, CFG, PostInfo("u1", True))
    assert mapped.events == [
        Event(eid(0, 1), ev.COMMENT_ADDED, ("post:p1",),
              {"id": "c1", "postId": "p1", "userId": "u2", "text": "Nice!", "createdAt": "2024-03-01T12:00:00.000Z"},
              TS),
        Event(eid(1, 1), ev.NOTIFICATION_NEW, ("user:u1",),
              {"kind": "comment", "postId": "p1", "fromUserId": "u2", "commentId": "c1"}, TS),
    ]
    assert all(e.counter is None for e in mapped.events)
    assert mapped.index_set == ("comment", "c1", {"postId": "p1", "userId": "u2"})


def test_commenting_on_your_own_post_notifies_nobody() -> None:
    mapped = map_change(change("insert", "comments", "c1", full={**COMMENT, "userId": "u1"}), 0, CFG,
                        PostInfo("u1", True))
    assert summary(mapped) == [(ev.COMMENT_ADDED, ("post:p1",))]


def test_commenter_falls_back_to_the_author_field() -> None:
    doc = {"_id": "c1", "postId": "p1", "authorId": "u3", "text": "hey"}
    mapped = map_change(change("insert", "comments", "c1", full=doc), 0, CFG, PostInfo("u1", True))
    assert mapped.events[0].data == {"id": "c1", "postId": "p1", "userId": "u3", "text": "hey"}
    assert mapped.events[1].data["fromUserId"] == "u3"
    doc["authorId"] = "u1"  # the post's author commenting
    assert summary(map_change(change("insert", "comments", "c1", full=doc), 0, CFG, PostInfo("u1", True))) == [
        (ev.COMMENT_ADDED, ("post:p1",))]


def test_comment_on_a_non_public_post_goes_only_to_its_author() -> None:
    mapped = map_change(change("insert", "comments", "c1", full=COMMENT), 0, CFG, PostInfo("u1", False))
    assert summary(mapped) == [(ev.COMMENT_ADDED, ("user:u1",)), (ev.NOTIFICATION_NEW, ("user:u1",))]
    c = change("update", "comments", "c1", full=COMMENT, updated={"text": "Nice!"})
    assert summary(map_change(c, 0, CFG, PostInfo("u1", False))) == [(ev.COMMENT_UPDATED, ("user:u1",))]
    c = change("delete", "comments", "c1", before=COMMENT)
    assert summary(map_change(c, 0, CFG, PostInfo("u1", False))) == [(ev.COMMENT_DELETED, ("user:u1",))]
    assert map_change(c, 0, CFG, PostInfo(None, False)).events == []


@pytest.mark.parametrize("op", ["update", "replace"])
def test_comment_edit_goes_to_the_post_without_notification(op: str) -> None:
    doc = {**COMMENT, "text": "Edited", "updatedAt": dt.datetime(2024, 3, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))}
    mapped = map_change(change(op, "comments", "c1", full=doc, updated={"text": "Edited"}), 0, CFG,
                        PostInfo("u1", True))
    assert mapped.events == [Event(eid(0), ev.COMMENT_UPDATED, ("post:p1",),
                                   {"id": "c1", "postId": "p1", "userId": "u2", "text": "Edited",
                                    "createdAt": "2024-03-01T12:00:00.000Z", "updatedAt": "2024-03-01T22:00:00.000Z"},
                                   TS)]
    assert mapped.index_set == ("comment", "c1", {"postId": "p1", "userId": "u2"})


def test_comment_edit_without_any_document_is_skipped() -> None:
    c = change("update", "comments", "c1", full=None, updated={"text": "x"})
    mapped = map_change(c, 0, CFG, PostInfo("u1", True))
    assert mapped.events == [] and mapped.skipped == SKIP_BAD_DOCUMENT and mapped.index_del is None


def test_comment_delete_with_pre_image_carries_only_ids() -> None:
    mapped = map_change(change("delete", "comments", "c1", before=COMMENT), 0, CFG, PostInfo("u1", True))
    assert mapped.events == [Event(eid(0), ev.COMMENT_DELETED, ("post:p1",),
                                   {"id": "c1", "postId": "p1", "userId": "u2"}, TS)]
    assert mapped.index_del == ("comment", "c1") and mapped.index_set is None


def test_comment_delete_without_pre_image_uses_the_remembered_entry_or_is_unroutable() -> None:
    c = change("delete", "comments", "c1")
    mapped = map_change(c, 0, CFG, PostInfo("u1", True), {"postId": "p1", "userId": "u2"})
    assert mapped.events == [Event(eid(0), ev.COMMENT_DELETED, ("post:p1",),
                                   {"id": "c1", "postId": "p1", "userId": "u2"}, TS)]
    mapped = map_change(c, 0, CFG, None, None)
    assert mapped.events == [] and mapped.skipped == SKIP_UNROUTABLE_DELETE
    assert mapped.index_del == ("comment", "c1")


def test_subject_reads_post_image_then_pre_image_then_remembered() -> None:
    c = change("insert", "comments", "c1", full=COMMENT)
    assert subject(c, CFG) == Subject("comment", "c1", "p1", "u2", COMMENT)
    c = change("delete", "likes", "l1", before=LIKE)
    assert subject(c, CFG, {"postId": "other", "userId": "x"}) == Subject("like", "l1", "p1", "u2", LIKE)
    assert subject(change("delete", "likes", "l1"), CFG) == Subject("like", "l1", None, None, None)
    assert subject(change("insert", "posts", "p1", full={"_id": "p1"}), CFG) is None
    assert subject(change("insert", "users", "x", full={"_id": "x"}), CFG) is None


def test_post_info_and_is_public() -> None:
    assert post_info(None, CFG) is None
    assert post_info({"authorId": "u1"}, CFG) == PostInfo("u1", True)
    assert post_info({"authorId": "u1"}, CFG, since=7) == PostInfo("u1", True, 7)
    assert post_info({"authorId": "a b", "visibility": "private"}, CFG) == PostInfo(None, False)
    assert not is_public(None, CFG)  # no document proves nothing
    assert is_public({}, CFG) and is_public({"visibility": "public"}, CFG)
    assert not is_public({"visibility": "PUBLIC"}, CFG)


@pytest.mark.parametrize("visibility", [None, "", "   ", "unknown", "Public", 0, False, [], {}, ["public"]])
def test_null_empty_or_unrecognised_visibility_is_private(visibility: Any) -> None:
    """Regression: ``visibility: null`` was treated as public (as if the field were absent)."""
    doc = {"_id": "p1", "authorId": "u1", "visibility": visibility, "text": "for me"}
    assert not is_public(doc, CFG)
    assert summary(map_change(change("insert", "posts", "p1", full=doc), 0, CFG)) == [(ev.POST_CREATED, ("user:u1",))]
    c = change("update", "posts", "p1", full=None, updated={"visibility": visibility, "text": "for me"})
    assert summary(map_change(c, 0, CFG, PostInfo("u1", True))) == [(ev.POST_UPDATED, ("user:u1",)),
                                                                    (ev.POST_DELETED, FEED)]
    # an empty public value never makes a post public, even when configured
    assert not is_public({"visibility": ""}, MappingConfig(public_values=("public", "")))


def test_missing_visibility_follows_the_setting() -> None:
    doc = {"_id": "p1", "authorId": "u1", "text": "t"}
    assert summary(map_change(change("insert", "posts", "p1", full=doc), 0, CFG)) == [
        (ev.POST_CREATED, ("public", "author:u1"))]
    strict = MappingConfig(missing_visibility_public=False)
    assert not is_public(doc, strict) and is_public({"visibility": "public"}, strict)
    assert summary(map_change(change("insert", "posts", "p1", full=doc), 0, strict)) == [
        (ev.POST_CREATED, ("user:u1",))]
    c = change("update", "posts", "p1", full=None, removed=("visibility",), updated={"text": "t2"})
    assert summary(map_change(c, 0, strict, PostInfo("u1", True))) == [(ev.POST_UPDATED, ("user:u1",)),
                                                                       (ev.POST_DELETED, FEED)]


def test_public_query_matches_what_is_public() -> None:
    assert public_query(CFG) == {"$or": [{"visibility": {"$in": ["public"]}}, {"visibility": {"$exists": False}}]}
    strict = MappingConfig(missing_visibility_public=False, public_values=("public", "everyone"),
                           fields=Fields(visibility="audience"))
    assert public_query(strict) == {"$or": [{"audience": {"$in": ["public", "everyone"]}}]}


def test_combine_fails_closed() -> None:
    pub, priv, unknown = PostInfo("u1", True, 5), PostInfo("u1", False, 5), PostInfo("u1", None)
    assert combine(pub, PostInfo("u1", True)) == PostInfo("u1", True)
    assert combine(pub, priv) == combine(priv, pub) == PostInfo("u1", False)
    assert combine(pub, unknown) == combine(unknown, pub) == PostInfo("u1", None)
    assert combine(pub, None) == combine(None, pub) == PostInfo("u1", None)
    assert combine(priv, None) == PostInfo("u1", False)
    assert combine(None, None) is None
    assert combine(pub, PostInfo("u2", True)) == PostInfo(None, True)  # authors disagree: none is trusted
    assert combine(PostInfo(None, True), PostInfo("u2", True)) == PostInfo("u2", True)


def test_post_index_entries_round_trip_and_junk_is_unknown() -> None:
    for info in (PostInfo("u1", True, 5), PostInfo(None, False, 0, deleted=True), PostInfo("u1", None, 9, True),
                 PostInfo("u1", True, 5, tags=("cats", "caf\u00e9")), PostInfo("u1", True, 5, tags=None)):
        assert from_entry(orjson.loads(orjson.dumps(post_entry(info)))) == info
    # written by an earlier release: no tags, so they are unknown
    assert from_entry({"authorId": "u1", "public": True, "since": 0, "deleted": False}) == PostInfo(
        "u1", True, 0, tags=None)
    for junk in (None, [], "x", {"authorId": "a b", "public": True, "since": 0, "deleted": False},
                 {"authorId": "u1", "public": True, "since": 0, "deleted": False, "tags": "cats"},
                 {"authorId": "u1", "public": True, "since": 0, "deleted": False, "tags": ["#Cats"]},
                 {"authorId": "u1", "public": True, "since": 0, "deleted": False, "tags": ["a b"]},
                 {"authorId": "u1", "public": "yes", "since": 0, "deleted": False},
                 {"authorId": "u1", "public": True, "since": -1, "deleted": False},
                 {"authorId": "u1", "public": True, "since": True, "deleted": False},
                 {"authorId": "u1", "public": True, "since": 0}):
        assert from_entry(junk) is None


def test_post_ref_says_which_post_a_change_needs_and_how_hard_to_look() -> None:
    assert post_ref(change("insert", "posts", "p1", full={"_id": "p1"}), CFG) is None
    assert post_ref(change("replace", "posts", "p1", full={"_id": "p1"}), CFG) == ("p1", True)
    assert post_ref(change("replace", "posts", "p1", full={"_id": "p1"}, before=POST), CFG) == ("p1", False)
    assert post_ref(change("update", "posts", "p1", full=POST, updated={"text": "x"}), CFG) == ("p1", True)
    assert post_ref(change("update", "posts", "p1", before=POST, updated={"text": "x"}), CFG) == ("p1", False)
    assert post_ref(change("delete", "posts", "p1"), CFG) == ("p1", True)
    assert post_ref(change("delete", "posts", "p1", before=POST), CFG) == ("p1", False)
    assert post_ref(change("insert", "likes", "l1", full=LIKE), CFG) == ("p1", True)
    assert post_ref(change("delete", "likes", "l1"), CFG) is None
    assert post_ref(change("delete", "likes", "l1"), CFG, {"postId": "p1", "userId": "u2"}) == ("p1", True)
    assert post_ref(change("insert", "users", "x", full={"_id": "x"}), CFG) is None
    assert post_ref({"operationType": "drop", "ns": {"db": "app", "coll": "posts"}}, CFG) is None


# -- changes that are not ours -----------------------------------------------------------------------------

@pytest.mark.parametrize("c", [
    {"operationType": "drop", "ns": {"db": "app", "coll": "posts"}},
    {"operationType": "rename", "ns": {"db": "app", "coll": "posts"}, "to": {"db": "app", "coll": "old"}},
    {"operationType": "dropDatabase", "ns": {"db": "app"}},
    {"operationType": "invalidate"},
    {"operationType": "createIndexes", "ns": {"db": "app", "coll": "likes"}},
    {"operationType": "someFutureOp", "ns": {"db": "app", "coll": "comments"}},
    {"ns": {"db": "app", "coll": "posts"}},
])
def test_operations_other_than_crud_are_not_watched(c: dict[str, Any]) -> None:
    c = {"_id": {"_data": "82"}, "clusterTime": Timestamp(T0, 1), "wallTime": WALL, **c}
    mapped = map_change(c, 0, CFG)
    assert mapped == Mapped(skipped=SKIP_NOT_WATCHED)


@pytest.mark.parametrize("op", ["insert", "update", "replace", "delete"])
@pytest.mark.parametrize("coll", ["users", "sessions", "Posts", "system.profile"])
def test_other_collections_are_not_watched(op: str, coll: str) -> None:
    doc = {"_id": "x1", "postId": "p1", "userId": "u2", "authorId": "u1", "text": "t"}
    mapped = map_change(change(op, coll, "x1", full=doc, before=doc, updated={"text": "t"}), 0, CFG,
                        PostInfo("u1", True), {"postId": "p1", "userId": "u2"})
    assert mapped == Mapped(skipped=SKIP_NOT_WATCHED)


def test_collection_names_are_configurable() -> None:
    cfg = MappingConfig(posts="articles", likes="hearts", comments="replies")
    assert summary(map_change(change("insert", "articles", "p1", full={"_id": "p1"}), 0, cfg)) == [
        (ev.POST_CREATED, ("public",))]
    assert summary(map_change(change("insert", "hearts", "l1", full=LIKE), 0, cfg, PostInfo("u2", True))) == [
        (ev.POST_LIKED, ("post:p1",))]
    assert map_change(change("insert", "posts", "p1", full={"_id": "p1"}), 0, cfg).skipped == SKIP_NOT_WATCHED


# -- payloads ----------------------------------------------------------------------------------------------

def test_fields_outside_the_allow_list_never_appear() -> None:
    doc = {"_id": "p1", "authorId": "u1", "text": "t", "email": "a@example.com", "passwordHash": "h",
           "token": "tk", "internal": {"text": "nested is fine: allow-list is top level"}}
    for c in (change("insert", "posts", "p1", full=doc), change("replace", "posts", "p1", full=doc),
              change("update", "posts", "p1", full=doc, updated={"text": "t", "email": "x"})):
        for e in map_change(c, 0, CFG).events:
            assert not {"email", "passwordHash", "token", "internal"} & set(e.data)
            assert "a@example.com" not in orjson.dumps(e.data).decode()


def test_huge_strings_are_truncated_to_max_string() -> None:
    cfg = MappingConfig(max_string=16)
    doc = {"_id": "p1", "authorId": "u1", "text": "abcdefghijklmnopqrstuvwxyz", "title": "short",
           "hashtags": ["0123456789abcdefXYZ"], "media": {"caption": "x" * 1000}}
    data = map_change(change("insert", "posts", "p1", full=doc), 0, cfg).events[0].data
    assert data == {"id": "p1", "authorId": "u1", "title": "short", "text": "abcdefghijklmnop",
                    "hashtags": ["0123456789abcdef"], "media": {"caption": "x" * 16}}


def test_deep_values_are_cut_at_max_depth() -> None:
    deep: Any = {"l7": 1}
    for level in range(6, 0, -1):
        deep = {f"l{level}": deep, "n": level}
    doc = {"_id": "p1", "authorId": "u1", "media": deep}
    data = map_change(change("insert", "posts", "p1", full=doc), 0, CFG).events[0].data
    # six levels of containers kept, the seventh cut; scalars at the last level stay
    assert data["media"] == {"l1": {"l2": {"l3": {"l4": {"l5": {"l6": None, "n": 6}, "n": 5}, "n": 4}, "n": 3},
                                    "n": 2}, "n": 1}
    cfg = MappingConfig(max_depth=2)
    data = map_change(change("insert", "posts", "p1", full={**doc, "hashtags": [["a", ["b"]]]}), 0, cfg).events[0].data
    assert data["media"] == {"l1": {"l2": None, "n": 2}, "n": 1}
    assert data["hashtags"] == [["a", None]]


def test_payload_over_max_payload_drops_the_largest_fields_and_keeps_ids() -> None:
    cfg = MappingConfig(max_payload=1024)
    doc = {"_id": "p1", "authorId": "u1", "title": "t" * 100, "text": "x" * 5000, "hashtags": ["a"],
           "media": {"url": "y" * 600}}
    data = map_change(change("insert", "posts", "p1", full=doc), 0, cfg).events[0].data
    assert data == {"id": "p1", "authorId": "u1", "title": "t" * 100, "hashtags": ["a"], "media": {"url": "y" * 600},
                    "truncated": True}
    assert len(orjson.dumps(data)) <= 1024
    doc["media"] = {"url": "y" * 900}
    data = map_change(change("insert", "posts", "p1", full=doc), 0, cfg).events[0].data
    assert data == {"id": "p1", "authorId": "u1", "title": "t" * 100, "hashtags": ["a"], "truncated": True}


def test_comment_payload_over_max_payload_keeps_its_ids() -> None:
    cfg = MappingConfig(max_payload=1024)
    doc = {"_id": "c1", "postId": "p1", "userId": "u2", "text": "w" * 3000, "createdAt": dt.datetime(2024, 1, 1)}
    data = map_change(change("insert", "comments", "c1", full=doc), 0, cfg, PostInfo("u1", True)).events[0].data
    assert data == {"id": "c1", "postId": "p1", "userId": "u2", "createdAt": "2024-01-01T00:00:00.000Z",
                    "truncated": True}


def test_updated_post_payload_including_changed_fits_max_payload() -> None:
    """Regression: "changed" was added after the payload had been bounded, so it could exceed max_payload."""
    cfg = MappingConfig(max_payload=1024)
    # without "changed" the title would fit (1005 bytes), with it it does not (1051)
    doc = {"_id": "p1", "authorId": "u1", "title": "t" * 950, "text": "x" * 2000}
    c = change("update", "posts", "p1", full=doc, updated={"title": "t", "text": "x", "media": 1, "hashtags": []})
    data = map_change(c, 0, cfg).events[0].data
    assert data == {"id": "p1", "authorId": "u1", "changed": ["title", "text", "hashtags", "media"],
                    "truncated": True}
    assert len(orjson.dumps(data)) <= 1024
    data = map_change(change("replace", "posts", "p1", full=doc), 0, cfg).events[0].data
    assert len(orjson.dumps(data)) <= 1024
    assert data["changed"] == list(cfg.post_fields) and data["truncated"] is True


def test_bson_values_become_json_safe() -> None:
    media = {
        "nan": math.nan, "inf": math.inf, "ninf": -math.inf, "ok": 1.5, "negzero": -0.0,
        "maxsafe": 2**53, "big": 2**53 + 1, "neg": -(2**63), "int64": Int64(5), "flag": True, "none": None,
        "when": dt.datetime(2024, 2, 29, 23, 59, 59, 999999), "whenaware": dt.datetime(
            2024, 1, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        "oid": OID, "dec": Decimal128("1.10"), "ts": Timestamp(5, 6), "bin": Binary(b"\x00\x01\xff"),
        "bytes": b"hi", "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"), "tuple": (1, "a"),
        "set": {1, 2}, "keys": {1: "int key"},
    }
    doc = {"_id": "p1", "authorId": "u1", "media": media}
    data = map_change(change("insert", "posts", "p1", full=doc), 0, CFG).events[0].data
    assert data["media"] == {
        "nan": None, "inf": None, "ninf": None, "ok": 1.5, "negzero": -0.0,
        "maxsafe": 2**53, "big": "9007199254740993", "neg": "-9223372036854775808", "int64": 5, "flag": True,
        "none": None, "when": "2024-02-29T23:59:59.999Z", "whenaware": "2024-01-01T00:00:00.000Z",
        "oid": HEX, "dec": "1.10", "ts": {"t": 5, "i": 6}, "bin": "AAH/", "bytes": "aGk=",
        "uuid": "12345678-1234-5678-1234-567812345678", "tuple": [1, "a"], "set": None, "keys": {"1": "int key"},
    }
    orjson.dumps(data)  # serialisable as is


def test_json_safe_pick_and_bound_directly() -> None:
    assert json_safe("abcdef", max_string=3, max_depth=1) == "abc"
    assert json_safe([[1]], max_string=3, max_depth=1) == [None]
    assert json_safe(object(), max_string=3, max_depth=1) is None
    assert pick(None, ["a"], max_string=3, max_depth=1) == {}
    assert pick({"a": 1, "b": 2, "c": 3}, ["c", "a", "z"], max_string=3, max_depth=1) == {"c": 3, "a": 1}
    small = {"id": "x", "v": "y"}
    assert bound(small, 100, keep=("id",)) is small
    assert bound({"id": "i" * 50, "a": "a" * 30, "b": "b" * 20}, 103, keep=("id",)) == {
        "id": "i" * 50, "b": "b" * 20, "truncated": True}
    assert bound({"id": "i" * 50, "a": "a" * 30, "b": "b" * 20}, 102, keep=("id",)) == {
        "id": "i" * 50, "truncated": True}
    assert bound({"id": "i" * 200, "a": 1}, 50, keep=("id",)) == {"id": "i" * 200, "truncated": True}


# -- times and ids -----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("wall", "ms"), [
    (dt.datetime(2023, 11, 14, 22, 13, 20, 123000), 1_700_000_000_123),
    (dt.datetime(2004, 7, 10, 1, 18, 33, 695000), 1_089_422_313_695),  # int(timestamp() * 1000) gives ...694
    (dt.datetime(1970, 1, 1), 0),
    (dt.datetime(2024, 1, 1, 2, 0, 0, 5000, tzinfo=dt.timezone(dt.timedelta(hours=2))), 1_704_067_200_005),
])
def test_event_ts_is_the_wall_time_in_exact_milliseconds(wall: dt.datetime, ms: int) -> None:
    c = change("insert", "posts", "p1", full={"_id": "p1"})
    c["wallTime"] = wall
    assert map_change(c, 0, CFG).events[0].ts == ms


def test_event_ts_falls_back_to_cluster_time_without_wall_time() -> None:
    c = change("insert", "posts", "p1", full={"_id": "p1"})
    del c["wallTime"]
    assert map_change(c, 0, CFG).events[0].ts == T0 * 1000


def test_ids_are_deterministic() -> None:
    c = change("insert", "comments", "c1", full=COMMENT, inc=9)
    first = map_change(c, 5, CFG, PostInfo("u1", True))
    again = map_change(c, 5, CFG, PostInfo("u1", True))
    assert [e.id for e in first.events] == [e.id for e in again.events] == [
        "7301444403200000009-40", "7301444403200000009-41"]
    assert first == again


def test_make_id_layout() -> None:
    assert EVENTS_PER_CHANGE == 8
    assert ev.time_part(T0, 7) == 7301444403200000007
    assert ev.make_id(T0, 7, 0, 0) == "7301444403200000007-0"
    assert ev.make_id(T0, 7, 3, 2) == "7301444403200000007-26"
    assert ev.make_id(1, 0, 0, 7) == "4294967296-7"
    assert ev.make_id(0, 0xFFFFFFFF, 1, 0) == "4294967295-8"
    for k in (-1, EVENTS_PER_CHANGE):
        with pytest.raises(ValueError, match="at most 8 events"):
            ev.make_id(T0, 1, 0, k)


def _order(event_id: str) -> tuple[int, int]:
    return ev.parse_id(event_id)


def test_ids_increase_strictly_across_events_positions_and_times() -> None:
    ids = [ev.make_id(s, i, p, k) for s in (T0, T0 + 1) for i in (1, 2, 0xFFFFFFFF) for p in range(4)
           for k in range(EVENTS_PER_CHANGE)]
    keys = [_order(i) for i in ids]
    assert all(a < b for a, b in itertools.pairwise(keys))
    # mapped events of successive changes sharing a clusterTime
    mapped = [map_change(change("insert", "likes", f"l{p}", full={**LIKE, "_id": f"l{p}"}), p, CFG,
                         PostInfo("u1", True)) for p in range(3)]
    all_ids = [e.id for m in mapped for e in m.events]
    assert all_ids == [eid(0, 0), eid(1, 0), eid(0, 1), eid(1, 1), eid(0, 2), eid(1, 2)]
    keys = [_order(i) for i in all_ids]
    assert all(a < b for a, b in itertools.pairwise(keys))


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**40), st.integers(0, 7))
def test_id_round_trip(seconds: int, increment: int, position: int, k: int) -> None:
    event_id = ev.make_id(seconds, increment, position, k)
    assert ev.parse_id(event_id) == ((seconds << 32) | increment, position * EVENTS_PER_CHANGE + k)
    assert ev.id_cluster_time(event_id) == (seconds, increment)
    assert ev.id_position(event_id) == position


def test_parse_id_extremes() -> None:
    top = 2**64 - 1
    assert ev.parse_id(f"{top}-{top}") == (top, top)
    assert ev.parse_id("0-0") == (0, 0)
    assert ev.parse_id("007-08") == (7, 8)


@pytest.mark.parametrize("bad", [
    "", "1", "1-", "-1", "-", "a-1", "1-b", "1-2-3", " 1-2", "1-2 ", "1 -2", "+1-2", "1-+2", "1.0-2", "0x1-2",
    "\uff11-2", "1-\u00b2", "\u0661-1", f"{2**64}-0", f"0-{2**64}", "1" * 30 + "-" + "1" * 12,
    "0" * 40 + "1-2",  # in range, but longer than any id we make
    None, 5, 1.5,
    b"1-2", ["1", "2"], ("1-2",),
])
def test_malformed_ids_raise_bad_event_id(bad: Any) -> None:
    with pytest.raises(BadEventId):
        ev.parse_id(bad)
    if isinstance(bad, str):
        with pytest.raises(BadEventId):
            ev.id_cluster_time(bad)
        with pytest.raises(BadEventId):
            ev.id_position(bad)
    assert issubclass(BadEventId, ValueError)


def test_room_grammar() -> None:
    for good in ("public", "post:p1", f"post:{HEX}", "author:u-1", "user:a.b@c:d_e", "hashtag:python",
                 "hashtag:caf\u00e9", "hashtag:web-dev", "post:" + "x" * 80, "hashtag:" + "t" * 64):
        assert ev.valid_room(good), good
    for bad in ("", "Public", "public ", "post:", "post:a b", "post:" + "x" * 81, "hashtag:_x", "hashtag:-x",
                "hashtag:" + "t" * 65, "user:\u00e9", "group:x", "*", "post:p1\n", None, 5, ["public"]):
        assert not ev.valid_room(bad), bad
    assert id_text(True) is None and id_text(1.5) is None and id_text(OID) == HEX and id_text(HEX) == "~" + HEX
    assert id_text(-5) == "-5" and id_text(1.0) == "1" and id_text(10**81) is None
    assert ev.normalise_tag(" ##Caf\u00e9 ") == "caf\u00e9" and ev.normalise_tag("a b") is None


# -- properties --------------------------------------------------------------------------------------------

FIELD_NAMES = ["_id", "authorId", "postId", "userId", "hashtags", "visibility", "title", "text", "media",
               "createdAt", "updatedAt", "email", "passwordHash"]
ID_TEXT = st.text(alphabet="abcAB019_.:@- ", min_size=0, max_size=90)
LEAVES = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | ID_TEXT
          | st.sampled_from(["public", "private", "#Tag", "u1", "p1"])
          | st.datetimes(min_value=dt.datetime(1, 1, 1)) | st.binary(max_size=20)
          | st.builds(ObjectId, st.binary(min_size=12, max_size=12))
          | st.builds(Timestamp, st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=5), max_leaves=30)
KEYS = st.sampled_from(FIELD_NAMES) | st.text(max_size=10)
DOCS = st.dictionaries(KEYS, JSON, max_size=10)
MAYBE_DOC = st.just(_MISSING) | st.none() | DOCS
PATHS = KEYS | st.sampled_from(["media.0", "visibility.level", "authorId.x", "stats.views", "hashtags.3"])
UPDATE_DESC = st.fixed_dictionaries({
    "updatedFields": st.dictionaries(PATHS, JSON, max_size=6),
    "removedFields": st.lists(PATHS, max_size=3),
    "truncatedArrays": st.lists(st.fixed_dictionaries({"field": PATHS, "newSize": st.integers(0, 5)}), max_size=2),
})
POST_INFOS = st.none() | st.builds(PostInfo, st.none() | st.sampled_from(["u1", "u2"]), st.none() | st.booleans(),
                                   st.sampled_from([0, TIME_PART, 2**64 - 1]), st.booleans())
REMEMBERED = st.none() | DOCS | st.fixed_dictionaries({"postId": JSON, "userId": JSON})
SMALL = MappingConfig(max_string=16, max_payload=1024, max_depth=3, missing_visibility_public=False)

ALLOWED_KEYS = {
    ev.POST_CREATED: {"id", "authorId", "truncated", *SMALL.post_fields},
    ev.POST_UPDATED: {"id", "authorId", "truncated", "changed", *SMALL.post_fields},
    ev.POST_DELETED: {"id"},
    ev.POST_LIKED: {"likes", "id", "postId", "userId"},
    ev.POST_UNLIKED: {"likes", "id", "postId", "userId"},
    ev.COMMENT_ADDED: {"id", "postId", "userId", "truncated", *SMALL.comment_fields},
    ev.COMMENT_UPDATED: {"id", "postId", "userId", "truncated", *SMALL.comment_fields},
    ev.COMMENT_DELETED: {"id", "postId", "userId"},
    ev.NOTIFICATION_NEW: {"kind", "postId", "fromUserId", "likeId", "commentId"},
}


PRIVATE_NOW = {"_id": "p1", "authorId": "u1", "visibility": "private", "text": "secret", "hashtags": ["new"]}
PUBLIC_BEFORE = {"_id": "p1", "authorId": "u2", "visibility": "public", "text": "old", "hashtags": ["old"]}
MADE_PRIVATE = {"updatedFields": {"visibility": "private", "hashtags": ["new"], "authorId": "u1"},
                "removedFields": [], "truncatedArrays": []}


@settings(max_examples=400)
@example(coll="posts", op="update", key="p1", full=PRIVATE_NOW, before=_MISSING, desc=MADE_PRIVATE,
         post=PostInfo("u2", True, 0, tags=("old",)), remembered=None, position=0, inc=1, cfg=CFG)
@example(coll="posts", op="update", key="p1", full=None, before=PUBLIC_BEFORE, desc=MADE_PRIVATE, post=None,
         remembered=None, position=0, inc=1, cfg=CFG)
@example(coll="posts", op="replace", key="p1", full=PRIVATE_NOW, before=PUBLIC_BEFORE, desc=MADE_PRIVATE,
         post=None, remembered=None, position=0, inc=1, cfg=CFG)
@given(coll=st.sampled_from(["posts", "likes", "comments"]), op=st.sampled_from(["insert", "update", "replace",
                                                                                 "delete"]),
       key=JSON, full=MAYBE_DOC, before=MAYBE_DOC, desc=UPDATE_DESC, post=POST_INFOS, remembered=REMEMBERED,
       position=st.integers(0, 1000), inc=st.integers(0, 2**32 - 1), cfg=st.sampled_from([CFG, SMALL]))
def test_map_change_never_raises_and_routes_only_to_valid_rooms(
        coll: str, op: str, key: Any, full: Any, before: Any, desc: dict[str, Any], post: PostInfo | None,
        remembered: Any, position: int, inc: int, cfg: MappingConfig) -> None:
    c = change(op, coll, key, full=full, before=before, inc=inc)
    if op == "update":
        c["updateDescription"] = desc
    mapped = map_change(c, position, cfg, post, remembered)
    assert mapped == map_change(c, position, cfg, post, remembered)  # deterministic
    assert len(mapped.events) <= 2
    assert not (mapped.events and mapped.skipped)
    for k, e in enumerate(mapped.events):
        assert e.rooms and len(set(e.rooms)) == len(e.rooms)
        assert all(ev.valid_room(r) for r in e.rooms), e.rooms
        assert e.type in ev.STORED_TYPES
        assert e.id == ev.make_id(T0, inc, position, k)
        assert ev.id_cluster_time(e.id) == (T0, inc) and ev.id_position(e.id) == position
        assert e.ts == TS
        assert set(e.data) <= ALLOWED_KEYS[e.type], (e.type, set(e.data))
        assert len(orjson.dumps(e.data)) <= cfg.max_payload
        if e.counter is not None:
            assert e.type in (ev.POST_LIKED, ev.POST_UNLIKED) and next(iter(e.data)) == "likes"
            assert e.counter.delta == (1 if e.type == ev.POST_LIKED else -1)
    # privacy: a room other than the author's only for what is proven public as of the change
    known = post.as_of(ev.time_part(T0, inc)) if post is not None else None
    only_users = False
    if coll != "posts":
        author_only = {ev.user_room(known.author_id)} if known is not None and known.author_id else set()
        if known is None or known.public is not True:
            for e in mapped.events:
                assert set(e.rooms) <= author_only, (e.type, e.rooms, known)
    elif op in ("insert", "replace"):
        only_users = isinstance(full, dict) and not is_public(full, cfg)
    elif op == "update":
        sets_visibility = isinstance(desc.get("updatedFields"), dict) and cfg.fields.visibility in desc["updatedFields"]
        only_users = (isinstance(full, dict) and not is_public(full, cfg)) or (
            not isinstance(before, dict) and known is None and not sets_visibility
            and cfg.fields.visibility not in desc.get("removedFields", []))
    else:
        if isinstance(before, dict):
            only_users = not is_public(before, cfg)
        else:
            only_users = known is None or known.public is not True
    if only_users:
        # a public post made private (or replaced by a private one) is announced as deleted where it was
        # public: its id only, in rooms of the post as it was before
        prior = post_info(before, cfg) if isinstance(before, dict) else known
        was = set() if prior is None or prior.public is not True else {
            ev.post_room(str(id_text(key))), ev.PUBLIC, *(ev.hashtag_room(t) for t in prior.tags or ()),
            *([ev.author_room(prior.author_id)] if prior.author_id else [])}
        for e in mapped.events:
            if all(r.startswith("user:") for r in e.rooms):
                continue
            assert op in ("update", "replace") and e.type == ev.POST_DELETED, (e.type, e.rooms)
            assert e.data == {"id": id_text(key)} and set(e.rooms) <= was, (e.data, e.rooms, prior)


# -- what a replay from the oplog must assume of a change it cannot place ------------------------------------

# documents that route: posts and reactions of two posts by two authors, liked and commented by three users
ROUTED = st.fixed_dictionaries({"postId": st.sampled_from(["p1", "p2"]), "userId": st.sampled_from(["u1", "u2", "u3"]),
                                "authorId": st.sampled_from(["u1", "u2"]),
                                "visibility": st.sampled_from(["public", "private"]),
                                "hashtags": st.lists(st.sampled_from(["cats", "dogs"]), max_size=2),
                                "text": st.sampled_from(["a", "b"])})
ROUTED_DESC = st.fixed_dictionaries({"updatedFields": st.dictionaries(st.sampled_from(
    ["text", "visibility", "authorId", "hashtags"]), st.sampled_from(["public", "private", "u1", "u2", ["cats"]]),
    max_size=3), "removedFields": st.lists(st.sampled_from(["visibility", "hashtags"]), max_size=1)})


@settings(max_examples=600)
@given(coll=st.sampled_from(["posts", "likes", "comments"]), op=st.sampled_from(["insert", "update", "replace",
                                                                                 "delete"]),
       key=JSON | st.sampled_from(["p1", "p2", "l1", "c1"]), full=MAYBE_DOC | ROUTED, before=MAYBE_DOC | ROUTED,
       desc=UPDATE_DESC | ROUTED_DESC, post=POST_INFOS,
       remembered=REMEMBERED | st.fixed_dictionaries({"postId": st.sampled_from(["p1", "p2"]),
                                                      "userId": st.sampled_from(["u1", "u3"])}),
       cfg=st.sampled_from([CFG, SMALL]))
def test_whatever_the_routing_a_change_reaches_only_rooms_may_reach_allows(
        coll: str, op: str, key: Any, full: Any, before: Any, desc: dict[str, Any], post: PostInfo | None,
        remembered: Any, cfg: MappingConfig) -> None:
    """A replay that cannot place a change resets the rooms may_reach names: they must hold every room the
    change's events could have gone to, whatever the watcher knew of its post (and of a deleted reaction)."""
    c = change(op, coll, key, full=full, before=before)
    if op == "update":
        c["updateDescription"] = desc
    for e in map_change(c, 0, cfg, post, remembered).events:
        assert all(may_reach(c, cfg, room) for room in e.rooms), (e.type, e.rooms)


def test_may_reach_names_the_rooms_a_change_could_go_to() -> None:
    edit = change("update", "posts", "p1", updated={"text": "x"})
    assert all(may_reach(edit, CFG, room) for room in ("post:p1", "public", "author:a9", "hashtag:any", "user:u9"))
    assert not may_reach(edit, CFG, "post:p2")
    like = change("insert", "likes", "l1", full={"_id": "l1", "postId": "p1", "userId": "u2"})
    assert may_reach(like, CFG, "post:p1") and may_reach(like, CFG, "user:a9")
    assert not any(may_reach(like, CFG, room) for room in ("post:p2", "public", "author:a1", "hashtag:cats"))
    unlike = change("delete", "likes", "l1")  # no pre-image: its post is unknown
    assert may_reach(unlike, CFG, "post:p2") and may_reach(unlike, CFG, "user:a9")
    assert not may_reach(unlike, CFG, "public")
    assert not may_reach(change("insert", "elsewhere", "x", full={"_id": "x"}), CFG, "public")


def test_images_missing_when_a_change_lacks_what_a_stream_reading_images_gets() -> None:
    doc = {"_id": "p1", "authorId": "a1"}
    assert not images_missing(change("insert", "posts", "p1", full=doc), CFG)
    assert not images_missing(change("update", "posts", "p1", full=doc, before=doc), CFG)
    assert images_missing(change("update", "posts", "p1", full=None, before=doc), CFG)  # no post-image
    assert images_missing(change("update", "comments", "c1", full=doc), CFG)  # no pre-image
    assert not images_missing(change("replace", "posts", "p1", full=doc, before=doc), CFG)
    assert images_missing(change("replace", "posts", "p1", full=doc), CFG)
    assert not images_missing(change("delete", "likes", "l1", before=doc), CFG)
    assert images_missing(change("delete", "likes", "l1"), CFG)
    assert not images_missing(change("delete", "elsewhere", "x"), CFG)
