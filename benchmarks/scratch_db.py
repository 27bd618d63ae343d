"""Scratch PostgreSQL databases for benchmarks (on BENCH_DATABASE_URL's server), dropped after.

Not a benchmark itself; imported by the scripts beside it.
"""

import os

SERVER = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/postgres")


def scratch_database(name: str) -> str:
    """(Re)create database `name` and return its URL."""
    import psycopg

    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{SERVER.rsplit('/', 1)[0]}/{name}"


def scratch_drop(name: str) -> None:
    """Drop database `name`, and the temporary data directory `scratch_django` made, if any."""
    import shutil
    import tempfile

    import psycopg

    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    data = os.environ.get("CONVOY_DATA_DIR", "")
    if os.path.basename(data).startswith("convoy-bench-") and data.startswith(
        tempfile.gettempdir()
    ):
        shutil.rmtree(data, ignore_errors=True)


def scratch_django(name: str, **env: str) -> str:
    """Create database `name`, point this process's Django (embedded shape, a temporary data dir)
    at it and set Django up. Returns the database URL; drop it with scratch_drop(name)."""
    import sys
    import tempfile
    from pathlib import Path

    url = scratch_database(name)
    os.environ.update(
        DATABASE_URL=url,
        CONVOY_DATA_DIR=tempfile.mkdtemp(prefix="convoy-bench-"),
        DJANGO_SETTINGS_MODULE="config.settings",
        **env,
    )
    os.environ.pop("REDIS_URL", None)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import django

    django.setup()
    return url


if __name__ == "__main__":
    print("scratch_db: helpers for the other benchmarks (no figures)")
