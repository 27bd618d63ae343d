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
    import psycopg

    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    print("scratch_db: helpers for the other benchmarks (no figures)")
