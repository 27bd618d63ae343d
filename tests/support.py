"""Helpers for tests that start real processes: env for subprocesses, polling, free ports."""

import contextlib
import datetime
import ipaddress
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.db import connection

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def wait_for(
    predicate: Callable[[], object], *, timeout: float = 30, interval: float = 0.05, what: str = ""
):
    """Poll until predicate() is truthy; fail with `what` after the deadline. Never a bare sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def host_processes(match: Callable[[list[bytes]], bool]) -> list[str]:
    """The command lines of host processes whose argv (a list of bytes) `match` accepts."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if match(args):
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_database_url() -> str:
    """A URL for the test database that subprocesses can open."""
    sd = connection.settings_dict
    if sd["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{sd['NAME']}"
    user = sd.get("USER") or ""
    host = sd.get("HOST") or "127.0.0.1"
    port = sd.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{sd['NAME']}"


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment for a server or worker that must share this test run's data."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_VERSION"}
    env.update(
        DATABASE_URL=test_database_url(),
        CONVOY_DATA_DIR=str(settings.DATA_DIR),
        CONVOY_REDIS_PREFIX=settings.REDIS_PREFIX,
        SECRET_KEY=settings.SECRET_KEY,
        DEBUG="0",
        PYTHONUNBUFFERED="1",
    )
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    else:
        env.pop("REDIS_URL", None)
    env.update(extra)
    return env


def process_stop(proc: subprocess.Popen, *, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)


@contextlib.contextmanager
def events_refused(prefix: str) -> Iterator[None]:
    """The event table refuses events whose action starts with `prefix` while inside: a real
    failure of the trail, nothing mocked (a trigger on this connection's database)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'audit store unavailable'; END $$"
            )
            cursor.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_auditevent FOR EACH ROW "
                f"WHEN (NEW.action LIKE '{prefix}%') EXECUTE FUNCTION pg_temp.refuse()"
            )
        else:
            cursor.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON audit_auditevent "
                f"WHEN NEW.action LIKE '{prefix}%' "  # a test's constant, not input
                "BEGIN SELECT RAISE(ABORT, 'audit store unavailable'); END"
            )
    try:
        yield
    finally:
        on = " ON audit_auditevent" if connection.vendor == "postgresql" else ""
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TRIGGER IF EXISTS refuse{on}")
            if connection.vendor == "postgresql":
                cursor.execute("DROP FUNCTION IF EXISTS pg_temp.refuse()")


def cert_make(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for `names` (host names or IP addresses) in
    `directory`, and its key: (cert.pem, key.pem)."""

    def entry(name: str) -> x509.GeneralName:
        try:
            return x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            return x509.DNSName(name)

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([entry(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
