"""Real services for the tests: embedded Postgres and Redis (Debian's packages) started once per
session in a throw-away PROXWATCH_HOME, the schema applied once by the real supabase CLI into a
template database, and a fresh database cloned from it for every test that asks (the fast pattern:
CREATE DATABASE … TEMPLATE).

When a service cannot start, the tests that need it fail (never skip): a missing service is a bug
in the set-up, which `make test` installs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest

from worker import db
from worker.embedded.services import EmbeddedPostgres, EmbeddedRedis, load_secrets

_counter = itertools.count(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def pw_home():
    # Under /tmp so that the postgres user (used when the tests run as root) can reach it.
    home = Path(tempfile.mkdtemp(prefix="proxwatch-test-", dir="/tmp"))
    os.chmod(home, 0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pw_secrets(pw_home):
    return load_secrets(pw_home)


@pytest.fixture(scope="session")
def pg_server(pw_home, pw_secrets):
    server = EmbeddedPostgres(pw_home, free_port(), pw_secrets["pg_password"])
    server.start()
    yield server
    server.stop()


def _url(server: EmbeddedPostgres, dbname: str) -> str:
    return server.url.rsplit("/", 1)[0] + "/" + dbname


@pytest.fixture(scope="session")
def template_db(pg_server, pw_home):
    """A database with every migration applied by the supabase CLI; the template of each test's."""
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute("create database pw_template")
    url = _url(pg_server, "pw_template")
    db.migrate(url, pw_home / "cli")
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute("alter database pw_template is_template true")
    return "pw_template"


@pytest.fixture
def db_url(pg_server, template_db):
    """A fresh, migrated database for one test."""
    name = f"pw_test_{next(_counter)}"
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"create database {name} template {template_db}")
    yield _url(pg_server, name)
    with psycopg.connect(pg_server.url, autocommit=True) as conn:
        conn.execute(f"drop database if exists {name} with (force)")


@pytest.fixture(scope="session")
def redis_server(pw_home, pw_secrets):
    server = EmbeddedRedis(pw_home / "redis-test", free_port(), pw_secrets["redis_password"])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def secret_key(pw_secrets):
    return pw_secrets["secret_key"]
