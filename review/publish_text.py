"""The text a change is published with: the pull request's title and body, the commit message
and its author, as the campaign's spec makes it now. An approval keeps the copy its reviewer
was shown and a changeset the copy it pushes, so a revision cannot change them unseen."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from django.conf import settings

from campaigns.models import Campaign

FIELDS = ("title", "body", "commit_message", "author")


@dataclass(frozen=True)
class PublishText:
    title: str
    body: str
    commit_message: str
    author: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def sha256(self) -> str:
        return publish_text_hash(self.as_dict())


def publish_text_hash(text: dict) -> str:
    """The SHA-256 an approval, a changeset and their audit events name the text by."""
    canonical = json.dumps({k: text.get(k, "") for k in FIELDS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def publish_text_for(campaign: Campaign) -> PublishText:
    """What publishing this campaign's changes would say now (the defaults as they always were:
    the campaign's name and description, the installation's bot identity)."""
    spec = (campaign.spec or {}).get("changeset") or {}
    title = spec.get("title") or campaign.name
    return PublishText(
        title=title,
        body=spec.get("body") or campaign.description,
        commit_message=spec.get("commit_message") or title,
        author=spec.get("author") or settings.PUBLISH_AUTHOR,
    )


def publish_text_changes(approved: dict, now: PublishText) -> list[str]:
    """The spec fields (`changeset.title`…) whose text is no longer what was approved."""
    return [f"changeset.{k}" for k in FIELDS if approved.get(k) != getattr(now, k)]
