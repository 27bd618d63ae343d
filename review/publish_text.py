"""The text a change is published with: the pull request's title and body, the commit message,
its author and the branch it is pushed to, as the campaign's spec makes it now. An approval
keeps the copy its reviewer was shown and a changeset the copy it pushes, so a revision cannot
change them unseen."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from django.conf import settings

from campaigns.models import Campaign

FIELDS = ("title", "body", "commit_message", "author", "branch")
# What approvals bound before the branch was bound too: their stored hashes are of these.
FIELDS_BEFORE_BRANCH = FIELDS[:4]


@dataclass(frozen=True)
class PublishText:
    title: str
    body: str
    commit_message: str
    author: str
    branch: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def sha256(self) -> str:
        return publish_text_hash(self.as_dict())


def publish_text_hash(text: dict) -> str:
    """The SHA-256 an approval, a changeset and their audit events name the text by."""
    # A text stored before the branch was bound hashes as it did then (its hash is stored with
    # it); it no longer matches a text of today, so its approval is needed again.
    keys = FIELDS if "branch" in text else FIELDS_BEFORE_BRANCH
    canonical = json.dumps({k: text.get(k, "") for k in keys}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def publish_text_for(campaign: Campaign) -> PublishText:
    """What publishing this campaign's changes would say now (the defaults as they always were:
    the campaign's name and description, the installation's bot identity, `convoy/<name>`)."""
    spec = (campaign.spec or {}).get("changeset") or {}
    title = spec.get("title") or campaign.name
    return PublishText(
        title=title,
        body=spec.get("body") or campaign.description,
        commit_message=spec.get("commit_message") or title,
        author=spec.get("author") or settings.PUBLISH_AUTHOR,
        branch=spec.get("branch") or f"convoy/{campaign.name}",
    )


def publish_text_changes(approved: dict, now: PublishText) -> list[str]:
    """The spec fields (`changeset.title`…) whose text is no longer what was approved."""
    return [f"changeset.{k}" for k in FIELDS if approved.get(k) != getattr(now, k)]
