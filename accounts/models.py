"""People: role permissions and per-user API tokens (stored only as a hash)."""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

EXPIRY_WARNING = timedelta(days=7)


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
    class Scope(models.TextChoices):
        READ = "read", "read: GET and HEAD only"
        WRITE = "write", "write: everything its owner may do"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, help_text="First characters, to tell tokens apart")
    digest = models.CharField(max_length=64, unique=True, help_text="SHA-256 of the token")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    scope = models.CharField(max_length=5, choices=Scope.choices, default=Scope.READ)
    expires_at = models.DateTimeField(help_text="Refused from then on (401 saying it expired)")

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"

    @property
    def active(self) -> bool:
        return self.revoked_at is None and not self.expired

    @property
    def expired(self) -> bool:
        return self.expires_at <= timezone.now()

    @property
    def expires_soon(self) -> bool:
        """Expires within a week (the token lists mark it), and has not yet."""
        return not self.expired and self.expires_at - timezone.now() <= EXPIRY_WARNING
