"""Login, failed login and logout become audit events."""

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from accounts.sockets import user_sockets_close
from audit.record import audit_record


@receiver(user_logged_in)
def _logged_in(sender, request, user, **kwargs):
    audit_record(action="people.login.succeeded", actor=user, target=user)


@receiver(user_login_failed)
def _login_failed(sender, credentials, request=None, **kwargs):
    audit_record(
        action="people.login.failed",
        actor=None,
        outcome="failure",
        payload={"username": str(credentials.get("username", ""))[:150]},
    )


@receiver(user_logged_out)
def _logged_out(sender, request, user, **kwargs):
    if user is not None:
        audit_record(action="people.logout", actor=user, target=user)
        user_sockets_close(user_id=user.pk)  # the user's other signed-in pages reconnect
