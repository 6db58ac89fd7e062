"""The model against the rules of docs/events.md, worked by hand; and its independence from the product."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.chaos.model import Change, Model
from tests.processes import ROOT

T = 1_800_000_000


def ins(coll: str, doc: dict[str, Any], t: tuple[int, int], epoch: int = 0) -> Change:
    return Change("insert", coll, str(doc["_id"]), doc, {}, (), t, t[0] * 1000 + 5, epoch)


def upd(coll: str, key: str, t: tuple[int, int], set_: dict[str, Any] | None = None,
        unset: tuple[str, ...] = ()) -> Change:
    return Change("update", coll, key, None, set_ or {}, unset, t, t[0] * 1000 + 5)


def delete(coll: str, key: str, t: tuple[int, int]) -> Change:
    return Change("delete", coll, key, None, {}, (), t, t[0] * 1000 + 5)


def test_a_public_post_goes_to_the_feed_its_author_and_its_tags_with_allow_listed_fields_only() -> None:
    m = Model()
    [e] = m.apply(ins("posts", {"_id": "p1", "authorId": "u1", "text": "hi", "hashtags": ["Cats", "#dogs"],
                                "internal": "secret"}, (T, 3)))
    assert e.id == f"{T << 32 | 3}-0"
    assert e.rooms == ("public", "author:u1", "hashtag:cats", "hashtag:dogs")
    assert e.data == {"id": "p1", "authorId": "u1", "text": "hi", "hashtags": ["Cats", "#dogs"]}
    assert e.ts == T * 1000 + 5 and e.private_of is None


def test_a_private_post_and_its_likes_comments_and_notifications_reach_only_its_author() -> None:
    m = Model()
    [created] = m.apply(ins("posts", {"_id": "p1", "authorId": "u1", "visibility": "private"}, (T, 1)))
    liked, note = m.apply(ins("likes", {"_id": "l1", "postId": "p1", "userId": "u2"}, (T, 2)))
    assert created.rooms == liked.rooms == note.rooms == ("user:u1",)
    assert liked.type == "post:liked" and liked.data == {"likes": 1, "id": "l1", "postId": "p1", "userId": "u2"}
    assert note.id == f"{T << 32 | 2}-1"
    assert note.data == {"kind": "like", "postId": "p1", "fromUserId": "u2", "likeId": "l1"}
    assert {created.private_of, liked.private_of, note.private_of} == {"u1"}
    [own] = m.apply(ins("comments", {"_id": "c1", "postId": "p1", "userId": "u1", "text": "me"}, (T, 3)))
    assert own.type == "comment:added" and own.rooms == ("user:u1",)  # no notification for the author's own


def test_visibility_changes_move_what_follows_and_the_update_itself() -> None:
    m = Model()
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1", "text": "a", "hashtags": ["cats"]}, (T, 1)))
    hidden, gone = m.apply(upd("posts", "p1", (T, 2), {"visibility": "private", "hashtags": ["dogs"]}))
    assert hidden.type == "post:updated" and hidden.rooms == ("user:u1",) and hidden.private_of == "u1"
    assert hidden.data["changed"] == ["hashtags", "visibility"]
    # announced as deleted, its id only, where it was public (its old tag, never the new one)
    assert gone.type == "post:deleted" and gone.data == {"id": "p1"} and gone.id == f"{T << 32 | 2}-1"
    assert gone.rooms == ("post:p1", "public", "author:u1", "hashtag:cats") and gone.private_of is None
    [liked, _] = m.apply(ins("likes", {"_id": "l1", "postId": "p1", "userId": "u2"}, (T, 3)))
    assert liked.rooms == ("user:u1",)
    [shown] = m.apply(upd("posts", "p1", (T, 4), unset=("visibility",)))  # absent: public
    assert shown.rooms == ("post:p1", "public", "author:u1", "hashtag:dogs") and shown.private_of is None
    [unliked] = m.apply(delete("likes", "l1", (T, 5)))
    assert unliked.type == "post:unliked" and unliked.rooms == ("post:p1",) and unliked.data["likes"] == 0


def test_edits_and_deletes_of_a_public_post_reach_its_feed_rooms_before_and_after() -> None:
    m = Model()
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1", "text": "a", "hashtags": ["cats"]}, (T, 1)))
    [retagged] = m.apply(upd("posts", "p1", (T, 2), {"hashtags": ["#Dogs"]}))
    assert retagged.rooms == ("post:p1", "public", "author:u1", "hashtag:cats", "hashtag:dogs")
    [gone] = m.apply(delete("posts", "p1", (T, 3)))
    assert gone.rooms == ("post:p1", "public", "author:u1", "hashtag:dogs") and gone.data == {"id": "p1"}


def test_a_replace_lists_what_differs_and_one_that_changes_nothing_seen_publishes_nothing() -> None:
    m = Model()
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1", "text": "a", "views": 1}, (T, 1)))
    same = Change("replace", "posts", "p1", {"_id": "p1", "authorId": "u1", "text": "a", "views": 2}, {}, (), (T, 2), 0)
    assert m.apply(same) == []
    other = Change("replace", "posts", "p1", {"_id": "p1", "authorId": "u1", "title": "t"}, {}, (), (T, 3), 0)
    [e] = m.apply(other)
    assert e.data == {"id": "p1", "authorId": "u1", "title": "t", "changed": ["title", "text"]}


def test_changes_sharing_a_cluster_time_are_numbered_by_position_and_counts_go_one_by_one() -> None:
    m = Model()
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1"}, (T, 1)))
    a = m.apply(ins("likes", {"_id": "l1", "postId": "p1", "userId": "u1"}, (T, 2)))  # a transaction of three
    b = m.apply(ins("likes", {"_id": "l2", "postId": "p1", "userId": "u2"}, (T, 2)))
    c = m.apply(delete("likes", "l1", (T, 2)))
    base = T << 32 | 2
    assert [e.id for e in a + b + c] == [f"{base}-0", f"{base}-8", f"{base}-9", f"{base}-16"]
    assert [e.data.get("likes") for e in a + b + c] == [1, 2, None, 1]


def test_an_update_of_fields_nobody_sees_publishes_nothing_but_takes_its_place() -> None:
    m = Model()
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1"}, (T, 1)))
    assert m.apply(upd("posts", "p1", (T, 2), {"views": 3})) == []
    [e] = m.apply(upd("posts", "p1", (T, 2), {"text": "x"}))
    assert e.id == f"{T << 32 | 2}-8" and e.data["changed"] == ["text"]


def test_a_database_that_lost_its_data_starts_from_nothing() -> None:
    m = Model()
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1"}, (T, 1)))
    m.apply(ins("likes", {"_id": "l1", "postId": "p1", "userId": "u2"}, (T, 2)))
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1"}, (T + 5, 1), epoch=1))
    [liked, _] = m.apply(ins("likes", {"_id": "l9", "postId": "p1", "userId": "u2"}, (T + 5, 2), epoch=1))
    assert liked.data["likes"] == 1
    assert m.apply(delete("likes", "l1", (T + 5, 3))) == [] and m.unknown


def test_the_model_imports_nothing_of_the_product() -> None:
    """The oracle must not share code with what it judges: importing it loads nothing of realtime/ or watchers/."""
    code = ("import sys, tests.chaos.model, tests.chaos.checker; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('realtime', 'watchers')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_an_update_below_the_top_level_is_read_from_the_document_after_it() -> None:
    m = Model()
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1", "hashtags": []}, (T, 1)))
    after = {"_id": "p1", "authorId": "u1", "hashtags": ["dogs"]}
    [e] = m.apply(Change("update", "posts", "p1", after, {"hashtags.0": "dogs"}, (), (T, 2), 0))
    assert e.data["changed"] == ["hashtags"] and e.rooms == ("post:p1", "public", "author:u1", "hashtag:dogs")


def test_an_update_that_truncates_an_array_changed_it() -> None:
    m = Model()
    m.apply(ins("posts", {"_id": "p1", "authorId": "u1", "hashtags": ["cats", "dogs"]}, (T, 1)))
    after = {"_id": "p1", "authorId": "u1", "hashtags": []}
    [e] = m.apply(Change("update", "posts", "p1", after, {}, (), (T, 2), 0, truncated=("hashtags",)))
    assert e.data["changed"] == ["hashtags"]
    assert e.rooms == ("post:p1", "public", "author:u1", "hashtag:cats", "hashtag:dogs")
