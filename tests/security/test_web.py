"""Web hardening: a Content-Security-Policy without inline script, security headers, cookie
flags, sign-in rate limiting (django-axes), self-service password change, private files."""

import os
import re
import stat
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from audit.models import AuditEvent
from tests.factories import PASSWORD, user_make

pytestmark = pytest.mark.shapes("embedded", "production")

TEMPLATES = Path(settings.BASE_DIR) / "templates"
INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.I)
EVENT_HANDLER = re.compile(r"\son[a-z]+\s*=", re.I)


def test_every_page_carries_the_policy_and_the_security_headers(client, manager):
    client.force_login(manager)
    for path in ("/", "/campaigns/", "/login/"):
        response = client.get(path, follow=True)
        policy = response.headers["Content-Security-Policy"]
        directives = dict(
            (part.split()[0], part.split()[1:]) for part in policy.split(";") if part.strip()
        )
        assert directives["script-src"] == ["'self'"], policy
        assert directives["frame-ancestors"] == ["'none'"]
        assert directives["object-src"] == ["'none'"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"


def test_signed_in_pages_and_downloads_are_not_cached(client, manager):
    """Diffs, the audit trail and downloads could be shown from the browser's cache after
    sign-out: signed-in responses (pages and the API) say `no-store`."""
    from tests.factories import campaign_make

    campaign = campaign_make(owner=manager)
    client.force_login(manager)
    for path in ("/campaigns/", f"/campaigns/{campaign.pk}/", "/api/v1/campaigns"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "no-store" in response.headers["Cache-Control"], path
        assert "private" in response.headers["Cache-Control"], path


def test_a_body_over_the_limit_is_answered_with_the_security_headers(client, manager):
    client.force_login(manager)
    big = b"x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1)
    for path in ("/campaigns/new/", "/api/v1/campaigns"):
        response = client.post(path, big, content_type="application/json")
        assert response.status_code == 413
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_https_responses_ask_browsers_to_keep_to_https(client, manager):
    if settings.EMBEDDED:
        assert settings.SECURE_HSTS_SECONDS == 0  # 127.0.0.1 over plain HTTP
        return
    response = client.get("/login/", secure=True)
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_templates_hold_no_inline_script_or_event_handler():
    """The policy refuses inline script: a template that relies on one would break silently."""
    offenders = []
    for path in TEMPLATES.rglob("*.html"):
        text = path.read_text()
        for pattern in (INLINE_SCRIPT, EVENT_HANDLER):
            offenders += [
                f"{path.relative_to(TEMPLATES)}: {m.group(0)}" for m in pattern.finditer(text)
            ]
        if "hx-on" in text or "javascript:" in text:
            offenders.append(f"{path.relative_to(TEMPLATES)}: hx-on or javascript: URL")
    assert offenders == []


def test_session_and_csrf_cookies_are_httponly_and_samesite(client, manager):
    response = client.post("/login/", {"username": manager.username, "password": PASSWORD})
    assert response.status_code == 302
    session = response.cookies[settings.SESSION_COOKIE_NAME]
    assert session["httponly"] and session["samesite"] == "Lax"
    assert session["secure"] == ("" if settings.EMBEDDED else True)
    page = client.get("/campaigns/new/")
    csrf = page.cookies.get(settings.CSRF_COOKIE_NAME) or client.cookies[settings.CSRF_COOKIE_NAME]
    assert csrf["httponly"] and csrf["samesite"] == "Lax"


@pytest.mark.shapes("production")
def test_production_cookies_are_secure():
    assert settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE


def test_sign_in_is_paused_after_five_wrong_passwords_for_that_user_and_address(client, db):
    victim = user_make(role="manager", username="vic")
    other = user_make(role="manager", username="oliver")
    codes = [
        client.post("/login/", {"username": victim.username, "password": "nope-nope"}).status_code
        for _ in range(5)
    ]
    assert codes == [200, 200, 200, 200, 429]  # the fifth wrong password locks
    locked = client.post("/login/", {"username": victim.username, "password": PASSWORD})
    assert locked.status_code == 429
    assert "Too many failed sign-ins" in locked.content.decode()
    assert "_auth_user_id" not in client.session
    # Another person signing in from the same address is not locked out.
    fine = client.post("/login/", {"username": other.username, "password": PASSWORD})
    assert fine.status_code == 302
    failed = AuditEvent.objects.filter(action="people.login.failed").count()
    assert failed >= 5


def test_people_change_their_own_password_through_the_validators(client, manager):
    client.force_login(manager)
    page = client.get("/account/password/")
    assert page.status_code == 200 and "Change your password" in page.content.decode()
    form = {"old_password": "wrong-one", "new_password1": "x", "new_password2": "x"}
    assert client.post("/account/password/", form).status_code == 422
    weak = {"old_password": PASSWORD, "new_password1": "password", "new_password2": "password"}
    response = client.post("/account/password/", weak)
    assert response.status_code == 422 and "too common" in response.content.decode()
    good = "plum-Orbit-47-canal"
    strong = {"old_password": PASSWORD, "new_password1": good, "new_password2": good}
    assert client.post("/account/password/", strong).status_code == 302
    assert client.get("/campaigns/").status_code == 200  # still signed in
    manager.refresh_from_db()
    assert manager.check_password(good)
    assert AuditEvent.objects.filter(action="people.password.changed").count() == 1


def _mode(path) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


def test_data_directory_keys_and_database_are_private(db, admin_user):
    from campaigns.secrets import secret_set

    secret_set(name="PRIVATE_CHECK", value="v", actor=admin_user)  # creates the key if needed
    # Where a root worker's bwrap sandboxes run as their own host user, that user's group may
    # pass through (not list) the data directory to reach what bwrap binds.
    if settings.DATA_DIR.stat().st_gid == settings.SANDBOX_HOST_UIDS[0] and os.geteuid() == 0:
        assert _mode(settings.DATA_DIR) == 0o710
    else:
        assert _mode(settings.DATA_DIR) == 0o700
    for name in ("secret_key", "secrets.key"):
        if (settings.DATA_DIR / name).exists():
            assert _mode(settings.DATA_DIR / name) == 0o600, name
    if connection.vendor == "sqlite":
        connection.close()
        connection.ensure_connection()
        assert _mode(connection.settings_dict["NAME"]) == 0o600


def test_wrong_current_passwords_on_the_change_form_are_paused_like_sign_in(client, db):
    """A stolen session could guess its owner's password on the change form without limit."""
    from axes.models import AccessAttempt

    victim = user_make(role="manager", username="val")
    client.force_login(victim)
    wrong = {"old_password": "guess-one", "new_password1": "plum-Orbit-47-canal"}
    wrong["new_password2"] = wrong["new_password1"]
    codes = [client.post("/account/password/", wrong).status_code for _ in range(5)]
    assert codes == [422, 422, 422, 422, 429]
    right = {**wrong, "old_password": PASSWORD}
    paused = client.post("/account/password/", right)
    assert paused.status_code == 429
    assert "Too many wrong passwords" in paused.content.decode()
    victim.refresh_from_db()
    assert victim.check_password(PASSWORD)  # the right one, while paused, changed nothing
    # One count with sign-in: the same user from the same address cannot sign in either.
    other = client.__class__()
    assert other.post("/login/", {"username": "val", "password": PASSWORD}).status_code == 429
    stored = "".join(a.post_data for a in AccessAttempt.objects.all())
    assert "guess-one" not in stored and "plum-Orbit" not in stored
