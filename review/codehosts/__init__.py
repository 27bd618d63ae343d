"""Code-host adapters: open and follow pull requests for published changes."""

from django.conf import settings

from review.codehosts.base import ChecksState, CodeHost, CodeHostError, PullRequest
from review.codehosts.github import github_from_settings, github_repo_slug


def codehost_for_remote(url: str) -> tuple[CodeHost, str] | None:
    """The adapter and repository slug for a remote URL, or None when no host is configured."""
    slug = github_repo_slug(url)
    if slug is None or not settings.GITHUB_TOKEN:
        return None
    return github_from_settings(), slug


__all__ = ["ChecksState", "CodeHost", "CodeHostError", "PullRequest", "codehost_for_remote"]
