"""Fault injection that tells the truth: fail points label their errors exactly as a real server does (issue 14,
item 2), so that what a driver does with them here (resume, retry, raise) is what it does in production.

The labels come from the server's error_labels.cpp, as the drivers' specs test them (change-streams-resume-
errorLabels.json, the transactions and retryable-writes specs). With ``MONGODB_URI`` set these run against a real
server started with ``enableTestCommands=1``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import OperationFailure, WriteConcernError

from tests.contract.helpers import take

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def db_client(client: MongoClient[Doc], db_name: str) -> Iterator[MongoClient[Doc]]:
    yield client
    client.admin.command({"configureFailPoint": "failCommand", "mode": "off"})
    client.drop_database(db_name)


@pytest.fixture
async def adb(aclient: AsyncMongoClient[Doc], db_name: str) -> AsyncIterator[AsyncMongoClient[Doc]]:
    yield aclient
    for point in ("failCommand", "failGetMoreAfterCursorCheckout"):
        await aclient.admin.command({"configureFailPoint": point, "mode": "off"})
    await aclient.drop_database(db_name)


async def test_fail_command_on_get_more_without_labels_is_not_resumable(adb: AsyncMongoClient[Doc],
                                                                         db_name: str) -> None:
    """Pins: failCommand on getMore (code 6, no labels) was labelled ResumableChangeStreamError, so drivers resumed."""
    stream = await adb[db_name]["c"].watch(max_await_time_ms=100)
    await adb.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                             "data": {"failCommands": ["getMore"], "errorCode": 6}})
    await adb[db_name]["c"].insert_one({"x": 1})
    with pytest.raises(OperationFailure) as info:
        await take(stream, 1)
    assert info.value.code == 6
    assert not info.value.has_error_label("ResumableChangeStreamError")
    await stream.close()


@pytest.mark.parametrize("code", [6, 91, 262, 150, 234])
async def test_an_error_on_a_checked_out_change_stream_cursor_is_resumable(adb: AsyncMongoClient[Doc],
                                                                           db_name: str, code: int) -> None:
    """Pins: failGetMoreAfterCursorCheckout was unknown to the stand-in."""
    stream = await adb[db_name]["c"].watch(max_await_time_ms=100)
    await adb.admin.command({"configureFailPoint": "failGetMoreAfterCursorCheckout", "mode": {"times": 1},
                             "data": {"errorCode": code}})
    await adb[db_name]["c"].insert_one({"x": 1})
    [event] = await take(stream, 1)
    assert event["fullDocument"]["x"] == 1
    await stream.close()


@pytest.mark.parametrize("code", [112, 251, 24])
def test_transaction_errors_are_transient(db_client: MongoClient[Doc], db_name: str, code: int) -> None:
    """Pins: inside a transaction, errors 251, 112 and 24 from failCommand lacked TransientTransactionError."""
    coll = db_client[db_name]["c"]
    coll.insert_one({"_id": 0})
    db_client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                             "data": {"failCommands": ["insert"], "errorCode": code}})
    with db_client.start_session() as session:
        session.start_transaction()
        with pytest.raises(OperationFailure) as info:
            coll.insert_one({"_id": 1}, session=session)
        assert info.value.code == code
        assert info.value.has_error_label("TransientTransactionError")
        session.abort_transaction()


def test_the_same_codes_outside_a_transaction_are_not_transient(db_client: MongoClient[Doc], db_name: str) -> None:
    db_client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                             "data": {"failCommands": ["find"], "errorCode": 112}})
    with pytest.raises(OperationFailure) as info:
        db_client[db_name]["c"].find_one({})
    assert not info.value.has_error_label("TransientTransactionError")


def test_a_retryable_code_on_a_retryable_write_is_retried(db_client: MongoClient[Doc], db_name: str) -> None:
    """Pins: the stand-in did not add RetryableWriteError, so drivers did not retry a retryable write."""
    db_client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                             "data": {"failCommands": ["insert"], "errorCode": 91}})
    db_client[db_name]["c"].insert_one({"_id": 1})  # the driver's retry succeeds
    assert db_client[db_name]["c"].count_documents({}) == 1


def test_the_write_concern_error_option_is_honoured(db_client: MongoClient[Doc], db_name: str) -> None:
    """Pins: failCommand's writeConcernError was ignored."""
    db_client.admin.command({"configureFailPoint": "failCommand", "mode": {"times": 1},
                             "data": {"failCommands": ["insert"],
                                      "writeConcernError": {"code": 100, "errmsg": "Not enough data-bearing nodes"}}})
    with pytest.raises(WriteConcernError) as info:
        db_client[db_name]["c"].insert_one({"_id": 1})
    assert info.value.code == 100
    assert db_client[db_name]["c"].count_documents({}) == 1  # the command ran
