"""Convoy's one settings module, driven by environment variables.

Without DATABASE_URL and REDIS_URL Convoy runs in the embedded shape (SQLite, in-process
Celery worker, in-memory channel layer); with both it runs the production shape.
"""

import os
import re
import secrets
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

# Every CONVOY_* variable Convoy reads; any other one is a typo that would silently do nothing.
KNOWN_CONVOY_VARS = {
    "CONVOY_DATA_DIR",
    "CONVOY_DATABASE_OWNER_URL",
    "CONVOY_DB_PREPARED",
    "CONVOY_SANDBOX_BACKEND",
    "CONVOY_SANDBOX_HOST_UID",
    "CONVOY_SANDBOX_HOST_UIDS",
    "CONVOY_ALLOW_UNSAFE_PROCESS_BACKEND",
    "CONVOY_REDIS_PREFIX",
    "CONVOY_TRUSTED_PROXY_HOPS",
    "CONVOY_HSTS_SECONDS",
    "CONVOY_WORKER_CONCURRENCY",
    "CONVOY_MAX_PARALLEL_REPOS",
    "CONVOY_RUN_LEASE_S",
    "CONVOY_REPO_ROOTS",
    "CONVOY_CODEHOST_ALLOW",
    "CONVOY_LOCAL_REGISTRIES",
    "CONVOY_AUDIT_SIGNING_KEY",
    "CONVOY_AUDIT_CHECKPOINT_EVERY",
    "CONVOY_SECRETS_KEY",
    "CONVOY_RUNSC_PLATFORM",
    "CONVOY_MODAL_APP",
    "CONVOY_MODAL_CREATES_PER_SECOND",
    "CONVOY_GITHUB_API_URL",
    "CONVOY_GITHUB_TOKEN",
    "CONVOY_PUBLISH_AUTHOR",
    "CONVOY_LOG_LEVEL",
    "CONVOY_DEBUG",
    "CONVOY_TEST_CRASH_BEAT",
    "CONVOY_EGRESS_TEST_HOSTS",
    "CONVOY_EGRESS_INDEX_ADDRESSES",
    "CONVOY_EGRESS_HOST_ADDRESSES",
    "CONVOY_EGRESS_HOST_PROXY_BY_NAME",
    "CONVOY_SANDBOX_SIM",
    "CONVOY_GATEWAY_BODY_MB",
    "CONVOY_API_TOKEN_MAX_DAYS",
    "CONVOY_IMAGE_BUILD_DISK_MB",
}
SANDBOX_BACKENDS = ("gvisor", "bwrap", "modal", "e2b", "daytona", "process")


def _fail(name: str, problem: str) -> None:
    raise ImproperlyConfigured(f"{name}: {problem}")


def envstr(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    _fail(name, f"expected true/false, got {raw!r}")
    return default


def envint(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        _fail(name, f"expected an integer, got {raw!r}")
    if value < minimum:
        _fail(name, f"must be at least {minimum}, got {value}")
    return value


def envchoice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name) or default
    if value not in choices:
        _fail(name, f"unknown value {value!r}; expected one of {', '.join(choices)}")
    return value


for _name in os.environ:
    if _name.startswith("CONVOY_") and _name not in KNOWN_CONVOY_VARS:
        _fail(_name, "unknown setting (check the spelling; see README's configuration table)")

TESTING = bool(os.environ.get("PYTEST_VERSION"))

# A test run keeps its files (SQLite database, workspaces, keys) apart from the developer's.
_default_data = BASE_DIR / "var" / (f"test-{os.getpid()}" if TESTING else "")
DATA_DIR = Path(envstr("CONVOY_DATA_DIR", str(_default_data))).resolve()
DATA_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
if DATA_DIR.stat().st_uid == os.getuid():
    # Keys, the SQLite file, mirrors and workspaces: Convoy's alone, but for the search (not
    # read) permission a root worker gives the sandboxes' host group (sandboxes/backends/
    # host_user.py), which a process starting later must not take back from a running worker.
    DATA_DIR.chmod(0o700 | (DATA_DIR.stat().st_mode & 0o010))
# Egress (docs/egress.md): the test-only name mapping (api.test=127.0.0.1) is refused outside the
# test suite and the workers it starts (they drop PYTEST_VERSION but run on its var/test-<pid>).
EGRESS_TEST_HOSTS_ALLOWED = TESTING or (
    DATA_DIR.parent == BASE_DIR / "var" and DATA_DIR.name.startswith("test-")
)
if envstr("CONVOY_EGRESS_TEST_HOSTS") and not EGRESS_TEST_HOSTS_ALLOWED:
    _fail("CONVOY_EGRESS_TEST_HOSTS", "a test-only name mapping, refused outside the test suite")
# Ranges the host's own package indexes are served from when not public (checked by the proxy).
EGRESS_INDEX_ADDRESSES = envstr("CONVOY_EGRESS_INDEX_ADDRESSES")
# Addresses the host is reached by beyond its interfaces' (a NAT's public address): refused to
# sandboxes like the interfaces' own, which the proxy reads from the kernel.
EGRESS_HOST_ADDRESSES = envstr("CONVOY_EGRESS_HOST_ADDRESSES")
# Through the host's proxy (HTTPS_PROXY), ask it for the name instead of the checked address.
EGRESS_HOST_PROXY_BY_NAME = envbool("CONVOY_EGRESS_HOST_PROXY_BY_NAME", False)

DATABASE_URL = envstr("DATABASE_URL")
REDIS_URL = envstr("REDIS_URL")
if REDIS_URL and urlsplit(REDIS_URL).scheme not in ("redis", "rediss", "unix"):
    _fail("REDIS_URL", f"expected a redis:// or rediss:// URL, got {REDIS_URL!r}")
EMBEDDED = not REDIS_URL
SHAPE = "embedded" if EMBEDDED else "production"

# Off in every shape: debug pages show settings and code. CONVOY_DEBUG=1 (or DEBUG=1) turns
# it on for development; errors otherwise get templates/500.html.
DEBUG = envbool("CONVOY_DEBUG", envbool("DEBUG", False))

SECRET_KEY = envstr("SECRET_KEY")
if not SECRET_KEY:
    if not (DEBUG or EMBEDDED or TESTING):
        _fail("SECRET_KEY", "required when DEBUG is off in the production shape")
    _key_file = DATA_DIR / "secret_key"
    if not _key_file.exists():
        _key_file.write_text(secrets.token_urlsafe(50))
        _key_file.chmod(0o600)
    SECRET_KEY = _key_file.read_text().strip()

ALLOWED_HOSTS = [h.strip() for h in envstr("ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [
    f"{scheme}://{host}" for host in ALLOWED_HOSTS if host != "*" for scheme in ("http", "https")
]

INSTALLED_APPS = [
    "daphne",
    # Before django.contrib.auth: its `changepassword` command replaces Django's (which revoked
    # no API token and wrote no event).
    "accounts",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "channels",
    "django_htmx",
    "ninja",
    "template_partials",
    "csp",
    "axes",
    "audit",
    "sandboxes",
    "agents",
    "campaigns",
    "review",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "config.errors.ErrorPageMiddleware",
    "audit.middleware.RequestContextMiddleware",
    "csp.middleware.CSPMiddleware",
    "config.headers.PrivateNoStoreMiddleware",
    # After the header middlewares (a 413 carries them too); nothing before it reads a body.
    "config.errors.BodySizeLimitMiddleware",
    # After the user, htmx and the CSP nonce are set: its refusal renders the error page. It
    # reads a form body: after the size check.
    "config.errors.TextParamsMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "builtins": ["template_partials.templatetags.partials"],
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "accounts.context_processors.role",
            ],
        },
    }
]

# --- Database -------------------------------------------------------------------------------
if DATABASE_URL:
    try:
        _db = dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
    except Exception as exc:  # dj-database-url raises several kinds for a malformed URL
        _fail("DATABASE_URL", f"malformed URL ({exc})")
    if _db["ENGINE"] not in (
        "django.db.backends.postgresql",
        "django.db.backends.sqlite3",
    ):
        _fail("DATABASE_URL", "only postgres:// and sqlite:// URLs are supported")
else:
    _db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(DATA_DIR / "convoy.sqlite3")}

if _db["ENGINE"] == "django.db.backends.sqlite3":
    # WAL plus IMMEDIATE transactions lets the web threads and the in-process worker share the
    # file without "database is locked" errors on upgrade from read to write.
    _db["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file (not :memory:) so that servers and workers started by tests share it.
    _db["TEST"] = {"NAME": str(DATA_DIR / "test.sqlite3")}
else:
    # One database per test run, so parallel runs on one machine never collide.
    _db["TEST"] = {"NAME": f"test_convoy_{os.getpid()}"}
    # Django's backend, whose connections make their cached plans again as tables grow.
    _db["ENGINE"] = "core.postgres"
    if envbool("CONVOY_DB_PREPARED", True):
        # Parameters bound by the server, and a statement run five times on a connection is
        # prepared: a worker sends the same few statements for every run, so PostgreSQL parses
        # and plans each once per connection (PostgreSQL CPU per sed run 10.0 -> 7.9 ms:
        # `benchmarks/run_cost.py --ab prepared`, docs/benchmarks.md).
        # Off for a pooler in transaction mode (PgBouncer), which cannot keep prepared
        # statements.
        _db["OPTIONS"] = {"server_side_binding": True, "prepare_threshold": 5}
DATABASES = {"default": _db}
# Two roles (PostgreSQL): DATABASE_URL's role owns nothing and gets only the privileges
# `manage.py db_grant` gives it; this URL names the same database as the role that owns the tables,
# used by `migrate` and `db_grant` alone (docs/security.md: the app cannot drop audit triggers).
DATABASE_OWNER_URL = envstr("CONVOY_DATABASE_OWNER_URL")
if DATABASE_OWNER_URL:
    try:
        _owner = dj_database_url.parse(DATABASE_OWNER_URL)
    except Exception as exc:  # as for DATABASE_URL
        _fail("CONVOY_DATABASE_OWNER_URL", f"malformed URL ({exc})")
    if _owner["ENGINE"] != "django.db.backends.postgresql" or _db["ENGINE"] != "core.postgres":
        _fail("CONVOY_DATABASE_OWNER_URL", "only with postgres:// URLs here and in DATABASE_URL")
    _place = ("NAME", "HOST", "PORT")
    if [_owner[k] for k in _place] != [_db[k] for k in _place]:
        _fail("CONVOY_DATABASE_OWNER_URL", "must name DATABASE_URL's database, host and port")
    if _owner["USER"] == _db["USER"]:
        _fail("CONVOY_DATABASE_OWNER_URL", "must name another role than DATABASE_URL's")
    _owner.update(ENGINE=_db["ENGINE"], OPTIONS=_db.get("OPTIONS", {}), TEST={"MIRROR": "default"})
    DATABASES["owner"] = _owner
    DATABASE_ROUTERS = ["config.routers.OwnerRouter"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, Celery, channels ----------------------------------------------------------------
REDIS_PREFIX = envstr("CONVOY_REDIS_PREFIX", f"convoy-test-{os.getpid()}" if TESTING else "convoy")

CELERY_BROKER_URL = REDIS_URL or "memory://localhost/"
CELERY_TASK_IGNORE_RESULT = True  # task state lives in our own tables
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "convoy"
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
if EMBEDDED:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"polling_interval": 0.005}
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "global_keyprefix": f"{REDIS_PREFIX}:celery:",
        "visibility_timeout": 3600,
    }
CELERY_BEAT_SCHEDULE: dict = {
    # Requeue runs whose worker died, fill free dispatch slots, complete finished campaigns.
    "campaigns-tick": {"task": "campaigns.tick", "schedule": 5.0},
    # Link committed audit events into the hash chain and sign due checkpoints.
    "audit-seal": {"task": "audit.tasks.audit_seal_task", "schedule": 1.0},
}
# Terminate sandboxes past their deadline or whose owner is gone; clear engine orphans.
CELERY_BEAT_SCHEDULE["sandboxes-reap"] = {"task": "sandboxes.reap", "schedule": 60.0}
# PostgreSQL: ANALYZE the tables whose rows changed since their statistics, where autovacuum
# has not (core/postgres/statistics.py).
CELERY_BEAT_SCHEDULE["campaigns-statistics"] = {"task": "campaigns.statistics", "schedule": 60.0}
# Review: pull request states and checks come from their code host every few minutes.
CELERY_BEAT_SCHEDULE["review-changesets-refresh"] = {
    "task": "review.changesets_refresh",
    "schedule": 300.0,
}
# Task modules that are not an app's tasks.py (autodiscovery finds only those).
CELERY_IMPORTS = ["review.tasks"]
CONVOY_WORKER_CONCURRENCY = envint("CONVOY_WORKER_CONCURRENCY", 4, minimum=1)
# The largest request body the model gateway reads from a sandbox (a model call's prompt).
GATEWAY_BODY_MB = envint("CONVOY_GATEWAY_BODY_MB", 8, minimum=1)
# The most disk one image build may use (its root filesystem and what its base step keeps).
IMAGE_BUILD_DISK_MB = envint("CONVOY_IMAGE_BUILD_DISK_MB", 20480, minimum=1)
# A test-only hook (config.embedded): the embedded beat thread dies right after it starts.
TEST_CRASH_BEAT = envbool("CONVOY_TEST_CRASH_BEAT", False)
if TEST_CRASH_BEAT and not TESTING:
    _fail("CONVOY_TEST_CRASH_BEAT", "a test-only hook, refused outside the test suite")

if EMBEDDED:
    CHANNEL_LAYERS = {"default": {"BACKEND": "config.layers.EmbeddedChannelLayer"}}
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": f"{REDIS_PREFIX}:ws"},
        }
    }

# --- Auth -----------------------------------------------------------------------------------
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
CSRF_FAILURE_VIEW = "accounts.views.csrf_failure"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", not (DEBUG or EMBEDDED))
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# --- Security headers, cookies, sign-in rate limit (docs/security.md) -----------------------
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_HTTPONLY = True  # pages hand the token to htmx in hx-headers, not through JS
SECURE_CONTENT_TYPE_NOSNIFF = True
# Browsers keep to HTTPS once they have seen Convoy over it (sent on HTTPS responses only).
SECURE_HSTS_SECONDS = envint("CONVOY_HSTS_SECONDS", 0 if DEBUG or EMBEDDED else 31_536_000)
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# No inline script anywhere (htmx and our JS are files under /static/). Inline styles stay
# allowed: pygal's SVG charts carry their own <style>; CSS cannot run code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'none'"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
    }
}
# django-axes: after 5 wrong passwords for one username from one address, sign-in is refused
# for 15 minutes (per username and address, so nobody can lock another person out from
# elsewhere); a success resets the count.
AUTHENTICATION_BACKENDS = [
    "accounts.auth.SignInLimitBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = 5
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked.html"
AXES_VERBOSE = False
# Wrong current passwords on the password change form count here too: never store them.
AXES_SENSITIVE_PARAMETERS = [
    *("username", "ip_address"),  # axes' own default
    *("old_password", "new_password1", "new_password2"),
]

# API tokens live at most this many days (a new one 90 by default, or this if lower).
API_TOKEN_MAX_DAYS = envint("CONVOY_API_TOKEN_MAX_DAYS", 366, minimum=1)

# Client IPs are believed only from this many trusted reverse-proxy hops (0: REMOTE_ADDR).
TRUSTED_PROXY_HOPS = envint("CONVOY_TRUSTED_PROXY_HOPS", 0)
if TRUSTED_PROXY_HOPS:  # the proxy terminates TLS and says so (HSTS, secure redirects)
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Sign-in limits count by the address the audit trail records (trusted hops only).
AXES_CLIENT_IP_CALLABLE = "audit.context.client_ip"

# --- Sandboxes ------------------------------------------------------------------------------
# The simulation backend (sandboxes/backends/sim.py: canned results, nothing executed) exists
# only for the scale benchmark, and only when asked for by name.
SANDBOX_SIM = envbool("CONVOY_SANDBOX_SIM", False)
if SANDBOX_SIM:
    SANDBOX_BACKENDS = (*SANDBOX_BACKENDS, "sim")
SANDBOX_BACKEND = envchoice("CONVOY_SANDBOX_BACKEND", "bwrap", SANDBOX_BACKENDS)


def envidrange(name: str, default: str) -> tuple[int, int]:
    """`first-last` or `first+count` host ids, as (first, last)."""
    raw = os.environ.get(name) or default
    found = re.fullmatch(r"\s*(\d+)\s*(?:([-+])\s*(\d+)\s*)?", raw)
    if not found:
        _fail(name, f"expected first-last or first+count, got {raw!r}")
    first = last = int(found[1])
    if found[2]:
        last = int(found[3]) if found[2] == "-" else first + int(found[3]) - 1
    if not 1 <= first <= last <= 2**32 - 2:
        _fail(name, f"expected ids from 1 to {2**32 - 2}, the first no greater than the last")
    return first, last


# The host ids bubblewrap sandboxes run as when the worker is root (sandboxes/backends/
# host_user.py), none a host account's: the first is the group every sandbox has for passing
# through (not listing) the data directory to what bwrap binds; each of the others is one
# run's user and group (its source sandbox claims it, its forks share it). One id (the
# single-user form, CONVOY_SANDBOX_HOST_UID): every sandbox runs as it. A worker that is not
# root starts its sandboxes as itself, unprivileged already.
if envstr("CONVOY_SANDBOX_HOST_UID") and envstr("CONVOY_SANDBOX_HOST_UIDS"):
    _fail("CONVOY_SANDBOX_HOST_UID", "set CONVOY_SANDBOX_HOST_UIDS or this one, not both")
SANDBOX_HOST_UIDS = envidrange(
    "CONVOY_SANDBOX_HOST_UIDS", envstr("CONVOY_SANDBOX_HOST_UID") or "2000000-2065535"
)
ALLOW_UNSAFE_PROCESS_BACKEND = envbool("CONVOY_ALLOW_UNSAFE_PROCESS_BACKEND", False)
if SANDBOX_BACKEND == "process" and not ALLOW_UNSAFE_PROCESS_BACKEND:
    _fail(
        "CONVOY_SANDBOX_BACKEND",
        "'process' runs commands unsandboxed; also set CONVOY_ALLOW_UNSAFE_PROCESS_BACKEND=1",
    )
REPO_ROOTS = [
    Path(p).resolve() for p in envstr("CONVOY_REPO_ROOTS", str(DATA_DIR / "repos")).split(":") if p
]
# Code hosts at non-public addresses (an internal Git server) that repository URLs may name:
# host names and/or networks, comma-separated ("git.corp.internal,10.20.0.0/16").
CODEHOST_ALLOW = [e.strip() for e in envstr("CONVOY_CODEHOST_ALLOW").split(",") if e.strip()]
# OCI registries on this machine (`127.0.0.1:5000`, `localhost:5000`) that
# `image.oci` may name; comma-separated. Convoy talks to them without TLS, so any other
# port of the loopback (the web server, Redis) is refused.
LOCAL_REGISTRIES = [
    e.strip().lower() for e in envstr("CONVOY_LOCAL_REGISTRIES").split(",") if e.strip()
]
for _entry in LOCAL_REGISTRIES:
    if not re.fullmatch(r"(127\.0\.0\.1|localhost):[0-9]{1,5}", _entry):
        _fail(
            "CONVOY_LOCAL_REGISTRIES",
            f"{_entry!r}: expected 127.0.0.1:<port> or localhost:<port>",
        )
RUNSC_PLATFORM = envchoice("CONVOY_RUNSC_PLATFORM", "ptrace", ("ptrace", "systrap", "kvm"))
MAX_PARALLEL_REPOS = envint("CONVOY_MAX_PARALLEL_REPOS", 8, minimum=1)
# A run whose worker has not renewed its lease for this long is requeued (worker died).
RUN_LEASE_S = envint("CONVOY_RUN_LEASE_S", 30, minimum=2)
MODAL_APP = envstr("CONVOY_MODAL_APP", "convoy")
MODAL_CREATES_PER_SECOND = envint("CONVOY_MODAL_CREATES_PER_SECOND", 4, minimum=1)

# --- Audit ----------------------------------------------------------------------------------
AUDIT_SIGNING_KEY = Path(envstr("CONVOY_AUDIT_SIGNING_KEY", str(DATA_DIR / "audit-signing.key")))
AUDIT_CHECKPOINT_EVERY = envint("CONVOY_AUDIT_CHECKPOINT_EVERY", 1000, minimum=1)
AUDIT_CHECKPOINT_SECONDS = 10  # a shorter tail than EVERY links is signed after this long

# --- Secrets and code hosts -----------------------------------------------------------------
SECRETS_KEY = envstr("CONVOY_SECRETS_KEY")
GITHUB_API_URL = envstr("CONVOY_GITHUB_API_URL", "https://api.github.com")
GITHUB_TOKEN = envstr("CONVOY_GITHUB_TOKEN")
# The installation's bot identity: the author of published commits whose spec names none, and
# the one author besides their own email any manager may name (campaigns.services.spec_db_check).
PUBLISH_AUTHOR = envstr("CONVOY_PUBLISH_AUTHOR", "Convoy <convoy@localhost>")
if not re.fullmatch(r"\s*[^<>\n]+?\s*<[^<>\s]+>\s*", PUBLISH_AUTHOR):
    _fail("CONVOY_PUBLISH_AUTHOR", f'expected "Name <email>", got {PUBLISH_AUTHOR!r}')

# --- Static files, i18n ---------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = DATA_DIR / "static"  # for `collectstatic`; made here, or whitenoise warns at start
STATIC_ROOT.mkdir(exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
WHITENOISE_USE_FINDERS = True  # serve straight from the apps; no collectstatic step needed
WHITENOISE_AUTOREFRESH = DEBUG

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

LOG_LEVEL = envchoice("CONVOY_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        name: {"level": LOG_LEVEL}
        for name in ("config", "accounts", "audit", "sandboxes", "campaigns")
    },
}
