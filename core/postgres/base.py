"""Django's PostgreSQL backend, with a connection's cached plans made again as its tables grow.

A connection keeps the plans PostgreSQL made for it: those of the statements psycopg prepares
(each run five times: `CONVOY_DB_PREPARED`) and those of our PL/pgSQL triggers. A plan made
while a table was nearly empty scans it whole, and is kept while the table grows. A worker's
connection lives as long as the chain of runs it carries, so in a 10,000-run simulation the
run's statements read the variants, sandboxes and queue-flag tables end to end, and the run's
last statement went from 6 to 41 ms (docs/benchmarks.md). Autovacuum's ANALYZE makes plans
again too, but only once a table has changed by a tenth, and not at all where it is off.

So a connection drops its plans (`DISCARD PLANS`: each is made again at its next use, for the
tables as they are then; prepared statements stay prepared) once they are `PLANS_MAX_AGE_S`
old, before the next query that finds them so.

With server-side binding (`CONVOY_DB_PREPARED`, on by default) a statement carries at most
65,535 parameters, the protocol's limit, and Django makes one per value of an `IN` list, so a
longer list failed (OperationalError; `tests/test_db_params.py`). Revisions, recounts and
repository registration build `IN` lists as long as a campaign's runs or repositories. Such a
statement is sent with its values merged in by psycopg's client-side binding (Django's default
way), unprepared; every other statement is bound by the server as before.
"""

from __future__ import annotations

import time

from django.db.backends.postgresql import base
from psycopg import ClientCursor, pq

PLANS_MAX_AGE_S = 10.0
MAX_BOUND_PARAMS = 65535  # the most parameters one statement can carry (a 16-bit count)


class BindingCursor(base.ServerBindingCursor):
    """Server-side binding, but a statement with more parameters than the protocol carries
    goes with its values merged in (client-side binding, Django's default)."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        if params is not None and len(params) > MAX_BOUND_PARAMS:
            query, params = ClientCursor(self.connection).mogrify(query, params), None
            prepare = False
        return super().execute(query, params, prepare=prepare, binary=binary)


class DatabaseWrapper(base.DatabaseWrapper):
    plans_discard_at = 0.0

    def get_connection_params(self):
        params = super().get_connection_params()
        if params.get("cursor_factory") is base.ServerBindingCursor:
            params["cursor_factory"] = BindingCursor
        return params

    def get_new_connection(self, conn_params):
        connection = super().get_new_connection(conn_params)
        self.plans_discard_at = time.monotonic() + PLANS_MAX_AGE_S
        return connection

    def create_cursor(self, name=None):
        if time.monotonic() >= self.plans_discard_at:
            self.plans_discard()
        return super().create_cursor(name)

    def plans_discard(self) -> None:
        """Drop this connection's cached plans now, unless its transaction has failed (no
        statement runs then: the next cursor tries again)."""
        if self.connection.info.transaction_status == pq.TransactionStatus.INERROR:
            return
        self.connection.execute("DISCARD PLANS")
        self.plans_discard_at = time.monotonic() + PLANS_MAX_AGE_S
