"""Signals campaigns sends so that higher layers (review) react without campaigns importing them.

`variant_diff_stored` is sent inside the transaction that stores a variant's diff, with
`variant_id`, `campaign_id`, `patch` (bytes) and `diff_sha256`, and optionally `secret_names`
(the campaign's `secrets:`, when the sender has its spec); a receiver's writes commit or roll
back with it.

`variant_diff_rows` is its one-statement form (PostgreSQL, where a lone variant's end and its
run's end are one statement: `campaigns.dispatch.run_succeed`): sent with the same arguments
before the diff is stored, a receiver returns the rows it would have written (`DiffRow`s), and
they are written in that statement, only if the variant's diff is. A receiver of
`variant_diff_stored` that writes must answer it with the same rows (review's digest does:
`tests/campaigns/test_run_end_statement.py`). Campaigns' own secret scan answers only the
first: a campaign with secrets always takes the transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db import models
from django.dispatch import Signal

variant_diff_stored = Signal()
variant_diff_rows = Signal()


@dataclass(frozen=True)
class DiffRow:
    """One row a receiver keeps for a stored diff: `values` upserted on the unique field `key`
    (a field name), or, with `values` None, the row whose `key` is `key_value` deleted."""

    model: type[models.Model]
    key: str
    key_value: Any
    values: dict[str, Any] | None = None
