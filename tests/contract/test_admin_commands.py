"""Transactions that start with a read, killAllSessions, snapshot times (issue 14, item 3), and the commands tools
ask for: rs.status(), rs.conf(), stats(), explain(), the profiler, getParameter (item 6).

Every assertion holds on a real MongoDB 7.0 replica set; with ``MONGODB_URI`` set the same tests run against one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bson import Timestamp
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    yield client[db_name]
    client.drop_database(db_name)


@pytest.fixture
def coll(db: Database[Doc]) -> Collection[Doc]:
    return db["items"]


# -- transactions -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("first", ["find", "aggregate", "distinct", "count"])
def test_a_transaction_whose_first_operation_is_a_read_commits(client: MongoClient[Doc], coll: Collection[Doc],
                                                                first: str) -> None:
    """Pins: a transaction opened by a read never opened; the next write and the commit failed with 251."""
    coll.insert_one({"_id": 1, "v": 1})
    reads = {"find": lambda s: list(coll.find({}, session=s)),
             "aggregate": lambda s: list(coll.aggregate([{"$match": {}}], session=s)),
             "distinct": lambda s: coll.distinct("v", session=s),
             "count": lambda s: coll.count_documents({}, session=s)}
    with client.start_session() as session, session.start_transaction():
        reads[first](session)
        coll.update_one({"_id": 1}, {"$set": {"v": 2}}, session=session)
        assert (coll.find_one({"_id": 1}) or {}).get("v") == 1  # not committed yet
    assert coll.find_one({"_id": 1}) == {"_id": 1, "v": 2}


def test_kill_all_sessions_aborts_open_transactions(client: MongoClient[Doc], coll: Collection[Doc]) -> None:
    """Pins: killAllSessions was not a command; a transaction left open held its locks for 60 s."""
    coll.insert_one({"_id": 1, "v": 1})
    session = client.start_session()
    try:
        session.start_transaction()
        coll.update_one({"_id": 1}, {"$set": {"v": 2}}, session=session)
        client.admin.command({"killAllSessions": []})
        coll.update_one({"_id": 1}, {"$set": {"v": 3}})  # no longer waits for the transaction's lock
        with pytest.raises(OperationFailure) as info:
            session.commit_transaction()
        assert info.value.code == 251
    finally:
        session.end_session()
    assert coll.find_one({"_id": 1}) == {"_id": 1, "v": 3}


def test_a_snapshot_read_says_which_time_it_read_at(client: MongoClient[Doc], coll: Collection[Doc]) -> None:
    """Pins: snapshot reads returned no atClusterTime, so a snapshot session never pinned a time."""
    coll.insert_one({"_id": 1})
    with client.start_session(snapshot=True) as session:
        assert [d["_id"] for d in coll.find({}, session=session)] == [1]
        pinned = session._snapshot_time  # what the driver read from the reply's atClusterTime
        assert isinstance(pinned, Timestamp)
        coll.insert_one({"_id": 2})
        # The session's later reads are at the pinned time: the second document is not there yet.
        assert [d["_id"] for d in coll.find({}, session=session)] == [1]
        assert coll.distinct("_id", session=session) == [1]


# -- what tools ask for -------------------------------------------------------------------------------------------
def test_repl_set_get_status_names_the_primary(client: MongoClient[Doc]) -> None:
    hello = client.admin.command("hello")
    status = client.admin.command("replSetGetStatus")
    assert status["set"] == hello["setName"]
    assert status["myState"] == 1
    me = [m for m in status["members"] if m.get("self")]
    assert len(me) == 1 and me[0]["stateStr"] == "PRIMARY" and me[0]["name"] == hello["me"]


def test_repl_set_get_config_and_local_system_replset(client: MongoClient[Doc]) -> None:
    hello = client.admin.command("hello")
    config = client.admin.command("replSetGetConfig")["config"]
    assert config["_id"] == hello["setName"]
    assert hello["me"] in [m["host"] for m in config["members"]]
    stored = client.local["system.replset"].find_one()
    assert stored is not None and stored["_id"] == hello["setName"]


def test_coll_stats_counts_the_documents(coll: Collection[Doc]) -> None:
    coll.insert_many([{"_id": i, "pad": "x" * 100} for i in range(5)])
    [stats] = list(coll.aggregate([{"$collStats": {"storageStats": {}, "count": {}}}]))
    assert stats["ns"] == coll.full_name
    assert stats["count"] == 5
    assert stats["storageStats"]["count"] == 5 and stats["storageStats"]["size"] > 500
    assert stats["storageStats"]["nindexes"] == 1


def test_explain_describes_the_plan(db: Database[Doc], coll: Collection[Doc]) -> None:
    coll.insert_many([{"x": 1}, {"x": 2}])
    plan = coll.find({"x": 1}).explain()
    assert plan["queryPlanner"]["namespace"] == coll.full_name
    assert "winningPlan" in plan["queryPlanner"]
    stats = db.command({"explain": {"find": coll.name, "filter": {"x": 1}}, "verbosity": "executionStats"})
    assert stats["executionStats"]["nReturned"] == 1


def _stages(plan: Any, stage: str) -> list[dict[str, Any]]:
    """The stages named ``stage`` anywhere in a plan (MongoDB nests them differently by engine and version)."""
    if isinstance(plan, dict):
        found = [plan] if plan.get("stage") == stage else []
        return found + [s for value in plan.values() for s in _stages(value, stage)]
    if isinstance(plan, list):
        return [s for value in plan for s in _stages(value, stage)]
    return []


def test_explain_names_the_index_a_find_reads(db: Database[Doc], coll: Collection[Doc]) -> None:
    """A find on an indexed field reads the index and fetches only the documents it names."""
    coll.insert_many([{"x": i % 50, "y": i} for i in range(500)])
    coll.create_index("x")
    [scan] = _stages(coll.find({"x": 7}).explain()["queryPlanner"]["winningPlan"], "IXSCAN")
    assert scan["indexName"] == "x_1"
    stats = db.command({"explain": {"find": coll.name, "filter": {"x": 7}}, "verbosity": "executionStats"})
    assert stats["executionStats"]["nReturned"] == stats["executionStats"]["totalDocsExamined"] == 10
    assert _stages(coll.find({"y": 7}).explain()["queryPlanner"]["winningPlan"], "COLLSCAN")


def test_profile_reports_the_level(db: Database[Doc]) -> None:
    reply = db.command({"profile": -1})
    assert reply["was"] == 0 and "slowms" in reply


def test_get_parameter_star_lists_the_parameters(client: MongoClient[Doc]) -> None:
    """Pins: {getParameter: "*"} (PyMongo's test harness asks it first) answered 72."""
    params = client.admin.command({"getParameter": "*"})
    assert "featureCompatibilityVersion" in params
    one = client.admin.command({"getParameter": 1, "featureCompatibilityVersion": 1})
    assert one["featureCompatibilityVersion"]["version"].startswith("7.")
    with pytest.raises(OperationFailure) as info:
        client.admin.command({"getParameter": 1})
    assert info.value.code == 72


def test_an_unknown_pipeline_stage_is_40324(coll: Collection[Doc]) -> None:
    """Pins: an unknown aggregation stage answered 20 or 2."""
    for target in (lambda: list(coll.aggregate([{"$frobnicate": {}}])), lambda: coll.watch([{"$frobnicate": {}}])):
        with pytest.raises(OperationFailure) as info:
            target()
        assert info.value.code == 40324
