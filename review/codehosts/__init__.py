"""Code-host adapters: open and follow pull requests for published changes."""

from review.codehosts.base import (
    ChecksState,
    CodeHost,
    CodeHostError,
    PullRequest,
    codehost_for_remote,
)

__all__ = ["ChecksState", "CodeHost", "CodeHostError", "PullRequest", "codehost_for_remote"]
