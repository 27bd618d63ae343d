"""People: role permissions and per-user API tokens (stored only as a hash)."""

from django.conf import settings
from django.db import models


class Capability(models.Model):
    """No table: the anchor for Convoy's role permissions (`accounts.<codename>`)."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("campaign_manage", "Create, launch, cancel and retry campaigns"),
            ("change_review", "Pick, approve and reject changes"),
            ("audit_view", "Read, verify and export the audit trail"),
            ("user_manage", "Manage users, roles and API tokens"),
            ("secret_manage", "Store and rotate secrets"),
            ("sandbox_view", "Inspect every sandbox and its logs"),
        ]

    def __str__(self) -> str:
        return "capability"


class ApiToken(models.Model):
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="First characters, to tell tokens apart")
    digest = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the token")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def active(self) -> bool:
        return self.revoked_at is None
