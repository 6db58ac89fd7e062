"""A MongoDB stand-in: an in-memory replica-set primary that speaks the wire protocol.

No ``mongod`` can be installed on the machines this project is developed and tested on, so the project
carries its own MongoDB for development and tests. The real PyMongo driver (``MongoClient`` and
``AsyncMongoClient``), the Node.js driver and ``mongosh`` talk to it unchanged over TCP. It reproduces
change streams as real MongoDB emits them (tokens, resume rules, pre- and post-images, transactions,
a bounded oplog, invalidation) and the CRUD commands producers use; ``mongomock`` does the query
matching and update operators.

Start one in-process with :class:`StandIn`, or from the shell with ``realtime mongo``.
"""

from realtime.standin.errors import CommandError
from realtime.standin.server import StandIn

__all__ = ["CommandError", "StandIn"]
