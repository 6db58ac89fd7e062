"""watchers.likecount's pure part (what the changes before a change at its cluster time did to a post's like
count) and watchers.publish's points (where in the stream a count holds)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from bson import ObjectId, Timestamp
from hypothesis import given
from hypothesis import strategies as st

from watchers.config import MappingConfig
from watchers.likecount import LikeChange, LikeCounts, delta, deltas, like_changes, liked, likes_of, unplaced
from watchers.publish import ALL_CHANGES, change_point, point

CFG = MappingConfig()
OID = ObjectId("65a1b2c3d4e5f60718293a4b")


def like(op: str, key: Any, post: Any = None, *, image: bool = True, coll: str = "likes") -> dict[str, Any]:
    c: dict[str, Any] = {"_id": {"_data": "82"}, "operationType": op, "clusterTime": Timestamp(5, 1),
                         "ns": {"db": "app", "coll": coll}, "documentKey": {"_id": key}}
    doc = {"_id": key, "postId": post, "userId": "u1"}
    if op == "insert":
        c["fullDocument"] = doc
    elif op == "delete":
        c["fullDocumentBeforeChange"] = doc if image else None
    return c


def test_like_changes_keep_inserts_and_deletes_of_likes_in_order() -> None:
    changes = [like("insert", "l1", "p1"), like("insert", "c1", "p1", coll="comments"), like("delete", "l0", "p2"),
               like("delete", OID, image=False), like("insert", 7, OID),
               {"_id": {"_data": "82"}, "operationType": "update", "ns": {"db": "app", "coll": "likes"},
                "documentKey": {"_id": "l1"}}]
    assert like_changes(changes, CFG) == [
        LikeChange(True, "'l1'", "p1", "l1"), LikeChange(False, "'l0'", "p2", "l0"),
        LikeChange(False, repr(OID), None, OID), LikeChange(True, "7", str(OID), 7)]


def test_unplaced_are_deletes_no_image_and_no_earlier_insert_tell() -> None:
    earlier = [LikeChange(True, "a", "p1"), LikeChange(False, "a", None), LikeChange(False, "b", None),
               LikeChange(False, "c", "p1")]
    assert [c.key for c in unplaced(earlier)] == ["b"]


def test_delta_counts_what_the_earlier_changes_did_to_one_post() -> None:
    earlier = [LikeChange(True, "a", "p1"), LikeChange(True, "b", "p2"), LikeChange(False, "a", None),
               LikeChange(False, "old", None), LikeChange(False, "other", None), LikeChange(True, "c", "p1"),
               LikeChange(False, "d", "p1")]
    owners = {"old": "p1", "other": "p2"}
    assert delta("p1", earlier, owners) == 1 + -1 + -1 + 1 + -1
    assert delta("p2", earlier, owners) == 1 - 1
    assert delta("p3", earlier, owners) == 0
    assert delta("p1", [], {}) == 0


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["p1", "p2"])), max_size=30), st.integers(0, 30))
def test_delta_plus_the_count_before_is_the_count_before_each_change(ops: list[tuple[bool, str]], cut: int) -> None:
    """Against a model: likes of two posts inserted and deleted (deletes with and without pre-images)."""
    existing = {f"old{i}": "p1" if i % 2 else "p2" for i in range(6)}
    likes = dict(existing)
    changes: list[LikeChange] = []
    for n, (insert, post) in enumerate(ops):
        if insert or not likes:
            key = f"new{n}"
            likes[key] = post
            changes.append(LikeChange(True, key, post))
        else:
            key = sorted(likes)[n % len(likes)]
            owner = likes.pop(key)
            changes.append(LikeChange(False, key, owner if n % 3 else None))  # every third without a pre-image
        if len(changes) == cut:
            break
    truth = list(likes.values())
    owners = {c.key: existing.get(c.key) for c in unplaced(changes)}
    for post in ("p1", "p2"):
        before = sum(1 for p in existing.values() if p == post)
        assert before + delta(post, changes, owners) == truth.count(post)


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["p1", "p2", None])),
                max_size=40),
       st.dictionaries(st.sampled_from(["p1", "p2", "p3"]), st.integers(0, 40)))
def test_deltas_in_one_pass_are_delta_for_each_post(ops: list[tuple[bool, str, str | None]],
                                                    cuts: dict[str, int]) -> None:
    """The batch's seeds carry every post's count forward in one pass: the same as delta() on each prefix."""
    earlier = [LikeChange(insert, key, post) for insert, key, post in ops]
    owners = {c.key: "p1" if c.key < "c" else "p2" for c in unplaced(earlier)}
    cuts = {post: min(cut, len(earlier)) for post, cut in cuts.items()}
    assert deltas(cuts, earlier, owners) == {post: delta(post, earlier[:cut], owners) for post, cut in cuts.items()}


def test_the_carry_forward_takes_the_like_changes_of_the_posts_it_counts_only() -> None:
    changes = [(like("insert", "l1", "p1"), 0), (like("insert", "l2", "p2"), 1),
               (like("insert", "c1", "p1", coll="comments"), 2), (like("delete", "l0", "p2"), 3),
               (like("delete", "l3", "p1"), 4), (like("insert", "l4", "p1"), 5)]
    assert likes_of(changes, 0, 5, {"p1"}, CFG) == (
        [LikeChange(True, "'l1'", "p1", "l1"), LikeChange(False, "'l3'", "p1", "l3")], [0, 4])
    # a delete that does not say its post may be placed by any insert before it: every like change is kept
    changes[3] = (like("delete", "l2", image=False), 3)
    assert likes_of(changes, 0, 5, {"p1"}, CFG)[1] == [0, 1, 3, 4]
    assert likes_of(changes, 1, 3, {"p1"}, CFG) == ([], [])


@given(st.lists(st.tuples(st.sampled_from(["insert", "delete", "comment"]), st.sampled_from(["a", "b", "c", "d"]),
                          st.sampled_from(["p1", "p2", "p3"]), st.booleans()), max_size=30),
       st.dictionaries(st.sampled_from(["p1", "p2", "p3"]), st.integers(0, 30)))
def test_the_carry_forward_of_some_posts_is_that_of_every_like_change(
        ops: list[tuple[str, str, str, bool]], first: dict[str, int]) -> None:
    """Carrying the counts of some posts through their like changes only gives what carrying them through all the
    like changes gives (deletes with and without pre-images), and asks MongoDB to place no other like."""
    changes = [(like("insert", "c", post, coll="comments") if op == "comment" else like(op, key, post, image=image), i)
               for i, (op, key, post, image) in enumerate(ops)]
    first = {post: min(i, len(changes)) for post, i in first.items()}
    end = max(first.values(), default=0)
    every = like_changes([c for c, _ in changes[:end]], CFG)
    some, at = likes_of(changes, 0, end, first, CFG)
    assert len(at) == len(some) and at == sorted(at)
    cuts_every = {post: len(like_changes([c for c, _ in changes[:i]], CFG)) for post, i in first.items()}
    cuts_some = {post: sum(1 for j in at if j < i) for post, i in first.items()}
    assert {c.key for c in unplaced(some)} <= {c.key for c in unplaced(every)}
    owners = {c.key: "p1" if c.key < "c" else "p2" for c in unplaced(every)}
    assert deltas(cuts_some, some, owners) == deltas(cuts_every, every, owners)


def test_points_order_changes_within_one_cluster_time() -> None:
    t = (5 << 32) | 1
    assert point(t, 0) < change_point(f"{t}:0") == point(t, 1) < change_point(f"{t}:1") < point(t, ALL_CHANGES)
    assert point(t, ALL_CHANGES) < point(t + 1, 0)
    assert point(t - 1, ALL_CHANGES) < point(t, 0)
    assert len(point(2**64 - 1, ALL_CHANGES)) == len(point(0, 0)) == 30
    legacy = f"{t:020d}"  # a count read by an earlier release: it holds every change at its time
    assert legacy + "9999999999" == point(t, ALL_CHANGES)


class World(LikeCounts):
    """LikeCounts on a model of MongoDB: likes that existed before the changes, and the changes (likes inserted
    and deleted, each at a cluster time of its own) applied in order; its snapshot reads count them as of a
    time. Counts every read."""

    def __init__(self, existing: dict[str, str], changes: list[dict[str, Any]]) -> None:
        super().__init__(cast(Any, None), cast(Any, None), CFG, [])
        self.existing, self.changes, self.reads = existing, changes, 0

    def as_of(self, at: Timestamp) -> dict[str, str]:
        likes = dict(self.existing)
        for c in self.changes:
            if c["clusterTime"] <= at:
                key = c["documentKey"]["_id"]
                if c["operationType"] == "insert":
                    likes[key] = c["fullDocument"]["postId"]
                else:
                    likes.pop(key, None)
        return likes

    async def _counts(self, post_ids: list[str], at: Timestamp) -> dict[str, int]:
        self.reads += 1
        likes = list(self.as_of(at).values())
        return {p: likes.count(p) for p in post_ids if p in likes}

    async def _owners(self, deletes: list[LikeChange], at: Timestamp) -> dict[str, str | None]:
        self.reads += 1
        likes = self.as_of(at)
        return {c.key: likes.get(c.raw_key) for c in deletes}


@given(st.lists(st.tuples(st.booleans(), st.sampled_from(["p1", "p2", "p3"]), st.booleans()), min_size=1, max_size=25),
       st.data())
def test_seeds_carried_from_a_snapshot_read_ahead_are_the_seeds_read_then(
        ops: list[tuple[bool, str, bool]], data: st.DataObject) -> None:
    """The watcher reads the counts of every post a run's likes name, as of before the first of those likes, while
    it maps the run: the seeds it then carries forward to each post's first counted like are those a read as of
    that like gives, with no other read (deletes with and without pre-images)."""
    existing = {f"old{i}": f"p{1 + i % 3}" for i in range(6)}
    likes, changes = dict(existing), []
    for n, (insert, post, image) in enumerate(ops):
        if insert or not likes:
            key = f"new{n}"
            likes[key] = post
            change = like("insert", key, post)
        else:
            key = sorted(likes)[n % len(likes)]
            change = like("delete", key, likes.pop(key), image=image)
        change["clusterTime"] = Timestamp(5 + n, 1)
        changes.append(change)
    placed = [(c, 0) for c in changes]
    world = World(existing, changes)
    likes = world.likes(placed)
    named = liked(*likes)
    first = data.draw(st.dictionaries(st.sampled_from(sorted(named)), st.integers(0, len(changes) - 1))) \
        if named else {}
    first = {post: max(i, named[post]) for post, i in first.items()}  # counted at or after its first like
    if not first:
        return
    told = [(c.get("fullDocument") or c.get("fullDocumentBeforeChange") or {}).get("postId") for c in changes]
    assert named == {post: told.index(post) for post in set(told) if post is not None}
    alone = asyncio.run(world.seeds(placed, first))
    reads = world.reads
    snapshot = asyncio.run(world.snapshot(placed, named, likes))
    assert asyncio.run(world.seeds(placed, first, snapshot)) == alone
    for post, i in first.items():  # one batch after the other, each with its own posts, from the same snapshot
        assert asyncio.run(world.seeds(placed, {post: i}, snapshot)) == {post: alone[post]}
    assert world.reads - reads <= reads * (1 + len(first))  # the snapshot's, and the owners' when deletes lack a post
    truth = {post: list(world.as_of(Timestamp(5 + i, 0)).values()).count(post) for post, i in first.items()}
    assert {post: seed.count for post, seed in alone.items()} == truth
