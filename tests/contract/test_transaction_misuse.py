"""Transactions used wrongly get MongoDB 7.0's codes, as raw commands show them (drivers catch most of these
before sending; other clients do not).

From mongodb/mongo: src/mongo/db/initialize_operation_session_info.cpp (how lsid, txnNumber, autocommit and
startTransaction go together: InvalidOptions 72), src/mongo/db/transaction/transaction_participant.cpp
(beginOrContinue: TransactionTooOld 225, NoSuchTransaction 251, TransactionCommitted 256, and 117 for a second
start at the active number on a replica set), src/mongo/db/commands/txn_cmds.cpp (CommandFailed 125).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from bson import Int64
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import OperationFailure

from tests.conftest import Mongo

pytestmark = [pytest.mark.contract]

Doc = dict[str, Any]


@pytest.fixture
def client(mongo: Mongo) -> Iterator[MongoClient[Doc]]:
    """A client of the test's own: the sessions its raw commands number are used by nothing else."""
    c: MongoClient[Doc] = MongoClient(mongo.uri, retryWrites=False)
    yield c
    c.close()


@pytest.fixture
def db(client: MongoClient[Doc], db_name: str) -> Iterator[Database[Doc]]:
    client[db_name]["items"].insert_one({"_id": 0})
    yield client[db_name]
    client.drop_database(db_name)


class Session:
    """Raw commands on one logical session, with the txnNumbers the test gives (the driver sends the lsid of a
    session of its own: the session of a client nobody else uses)."""

    def __init__(self, client: MongoClient[Doc], db: Database[Doc]) -> None:
        self.client, self.db = client, db
        self.session = client.start_session()

    def run(self, command: Doc, number: int | None, *, on: str = "", **fields: Any) -> Doc:
        doc = {**command, **fields}
        if number is not None:
            doc["txnNumber"] = Int64(number)
        return self.client[on or self.db.name].command(doc, session=self.session)

    def start(self, number: int) -> Doc:
        return self.run({"find": "items"}, number, autocommit=False, startTransaction=True)

    def commit(self, number: int) -> Doc:
        return self.run({"commitTransaction": 1}, number, on="admin", autocommit=False)

    def abort(self, number: int) -> Doc:
        return self.run({"abortTransaction": 1}, number, on="admin", autocommit=False)


def fails(code: int, action: Any) -> OperationFailure:
    with pytest.raises(OperationFailure) as info:
        action()
    assert info.value.code == code, info.value.details
    return info.value


def test_commit_or_abort_without_a_transaction(client: MongoClient[Doc], db: Database[Doc]) -> None:
    """Pins: the message said "has been aborted" of a transaction that never began."""
    s = Session(client, db)
    error = fails(251, lambda: s.commit(1))
    assert "does not match any in-progress transactions" in str(error)
    assert "TransientTransactionError" in error.details.get("errorLabels", [])  # type: ignore[union-attr]
    fails(251, lambda: s.abort(1))


def test_abort_twice_and_commit_after_abort(client: MongoClient[Doc], db: Database[Doc]) -> None:
    s = Session(client, db)
    s.start(1)
    s.abort(1)
    fails(251, lambda: s.abort(1))
    fails(251, lambda: s.commit(1))


def test_abort_after_commit(client: MongoClient[Doc], db: Database[Doc]) -> None:
    s = Session(client, db)
    s.start(1)
    s.commit(1)
    s.commit(1)  # a retried commit is answered again
    fails(256, lambda: s.abort(1))
    fails(256, lambda: s.run({"find": "items"}, 1, autocommit=False))


def test_start_twice_at_the_same_number(client: MongoClient[Doc], db: Database[Doc]) -> None:
    """Pins: the second start silently began the transaction again."""
    s = Session(client, db)
    s.start(1)
    fails(117, lambda: s.start(1))


def test_a_lower_txn_number_is_too_old(client: MongoClient[Doc], db: Database[Doc]) -> None:
    s = Session(client, db)
    s.start(3)
    s.commit(3)
    fails(225, lambda: s.start(2))
    fails(225, lambda: s.run({"find": "items"}, 2, autocommit=False))
    fails(225, lambda: s.run({"insert": "items", "documents": [{"x": 1}]}, 1))  # a retryable write


def test_a_continued_transaction_at_another_number(client: MongoClient[Doc], db: Database[Doc]) -> None:
    s = Session(client, db)
    s.start(1)
    fails(251, lambda: s.run({"find": "items"}, 2, autocommit=False))


@pytest.mark.parametrize(("fields", "number"), [
    ({"autocommit": True}, 1),                                 # autocommit may only be false
    ({"autocommit": True, "startTransaction": True}, 1),
    ({"startTransaction": True}, 1),                           # startTransaction needs autocommit
    ({"autocommit": False, "startTransaction": False}, 1),     # and may only be true
    ({"autocommit": False}, None),                             # autocommit needs a txnNumber
    ({}, -1),                                                  # a txnNumber is not negative
])
def test_session_fields_that_do_not_go_together(client: MongoClient[Doc], db: Database[Doc], fields: Doc,
                                                number: int | None) -> None:
    """Pins: autocommit: true ran the command outside any transaction."""
    fails(72, lambda: Session(client, db).run({"find": "items"}, number, **fields))


def test_commit_outside_a_transaction(client: MongoClient[Doc], db: Database[Doc]) -> None:
    """Pins: a commit without autocommit answered ok."""
    s = Session(client, db)
    fails(125, lambda: s.run({"commitTransaction": 1}, 1, on="admin"))
    fails(125, lambda: s.run({"abortTransaction": 1}, 1, on="admin"))
