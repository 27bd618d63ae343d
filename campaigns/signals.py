"""Signals campaigns sends so that higher layers (review) react without campaigns importing them.

`variant_diff_stored` is sent inside the transaction that stores a variant's diff, with
`variant_id`, `campaign_id`, `patch` (bytes) and `diff_sha256`, and optionally `secret_names`
(the campaign's `secrets:`, when the sender has its spec); a receiver's writes commit or roll
back with it.
"""

from django.dispatch import Signal

variant_diff_stored = Signal()
