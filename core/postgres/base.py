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
"""

from __future__ import annotations

import time

from django.db.backends.postgresql import base
from psycopg import pq

PLANS_MAX_AGE_S = 10.0


class DatabaseWrapper(base.DatabaseWrapper):
    plans_discard_at = 0.0

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
