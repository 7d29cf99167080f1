"""Real services for the tests: embedded Postgres and Redis (Debian's packages) started once per
session in a throw-away PROXWATCH_HOME, the schema applied once by the real supabase CLI into a
template database, and a fresh database cloned from it for every test that asks (the fast pattern:
CREATE DATABASE … TEMPLATE).

On top of them, the fixtures the integration and browser tests share (their workings live in
tests/support): connections, the stand-in, the seeded worlds, fake PVE servers, a real sshd, the
product's processes.

When a service cannot start, the tests that need it fail (never skip): a missing service is a bug
in the set-up, which `make test` installs.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support import processes, seed
from tests.support.processes import Procs
from tests.support.sshd import running_sshd
from tests.support.waiting import free_port
from worker import db
from worker.crypto import Box
from worker.embedded.services import EmbeddedPostgres, EmbeddedRedis, load_secrets
from worker.settings import load

_counter = itertools.count(1)


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


# ------------------------------------------------------------------------------------ connections
@pytest.fixture
def settings(monkeypatch):
    return load()


@pytest.fixture
def box(secret_key):
    return Box(secret_key)


@pytest.fixture
def conn(db_url):
    """A connection to the test's database (dict rows, transactions: commit to publish)."""
    with db.connect(db_url) as c:
        yield c


@pytest.fixture
def uconn(db_url):
    """An autocommit connection for seed.call(): one API call as a user per transaction."""
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as c:
        yield c


@pytest.fixture
def pool(db_url):
    p = db.make_pool(db_url, min_size=1, max_size=8)
    yield p
    p.close()


# -------------------------------------------------------------------------- stand-in, seeded worlds
@pytest.fixture
def standin(db_url, pw_secrets):
    """The embedded Supabase stand-in (Auth, PostgREST RPC, Realtime) for the test's database."""
    from tests.support.standin import running_standin  # imported here: the unit tests need none of it

    with running_standin(db_url, pw_secrets["jwt_secret"]) as server:
        yield server


@pytest.fixture
def fleet(db_url, secret_key):
    """The monitoring fleet (seed.seed_fleet); modules that need another world override it."""
    return seed.seed_fleet(db_url, secret_key)


@pytest.fixture
def teams(conn, secret_key):
    """Teams acme and globex with users of every role and servers pve1, pve2, pveg (seed.seed_teams)."""
    return seed.seed_teams(conn, secret_key)


# ------------------------------------------------------------------------------ peers: PVE, sshd
@pytest.fixture
def fingerprint(fakepve_cafile):
    """The SHA-256 fingerprint of every fake PVE's certificate (what a server pins)."""
    from tests.support import fleet as fakes

    return fakes.fingerprint_of(fakepve_cafile)


@pytest.fixture
def pve(fakepve):
    """A fake PVE over HTTPS that also knows the API token seed.TOKEN."""
    from tests.support import fleet as fakes

    return fakes.allow_token(fakepve)


@pytest.fixture
def opspve(_fakepve_pki):
    """An OpsPve over HTTPS where 1 PVE second is 0.1 s (a 3 s restart takes 0.3 s), with VM 100
    ("web", stopped) and container 200 ("dns", running) on node pve1."""
    from tests.support import fleet as fakes

    pve, serving = fakes.serve_ops(_fakepve_pki, 0.1)
    pve.add_vm(100, "web", node="pve1", status="stopped")
    pve.add_ct(200, "dns", node="pve1", status="running")
    try:
        yield pve
    finally:
        serving.stop()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 for the whole session (tests/support/sshd.py)."""
    with running_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


# ---------------------------------------------------------------------------- the product's processes
@pytest.fixture
def services_env(db_url, redis_server, secret_key, tmp_path):
    """The environment of the product's processes for this test's services (Redis flushed)."""
    processes.flush_redis(redis_server.url)
    return processes.service_env(db_url, redis_server.url, secret_key, tmp_path)


@pytest.fixture
def ops_env(services_env):
    """services_env with the operations' dispatch polled every 200 ms."""
    return dict(services_env, PROXWATCH_OPERATION_POLL_MS="200")


@pytest.fixture
def procs(ops_env, tmp_path):
    """Worker and scheduler subprocesses of the test, stopped at its end (tests/support/processes.py)."""
    p = Procs(ops_env, tmp_path / "procs.log")
    yield p
    p.close()
