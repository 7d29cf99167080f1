"""Starting and operating proxwatch: each command asks only for what it uses, two processes on one
PROXWATCH_HOME share one bootstrap, and the dashboard signs people in by itself only on loopback."""

from __future__ import annotations

import pytest

from tests.support.processes import run_cli, service_env
from tests.support.seed import TOKEN, count, seed_teams


# ------------------------------------------------------- commands ask only for what they use
@pytest.fixture
def database_only(db_url, tmp_path):
    """Supabase mode with DATABASE_URL alone: no REDIS_URL, no PROXWATCH_SECRET_KEY."""
    env = service_env(db_url, "", "", tmp_path)
    for name in ("REDIS_URL", "PROXWATCH_SECRET_KEY"):
        env.pop(name)
    return env


@pytest.mark.parametrize("args", [
    ["db", "migrate"],
    ["history", "pve1", "--tenant", "acme"],
    ["servers", "list"],
    ["tenants", "list"],
    ["tenants", "add", "initech"],
    ["users", "add", "new@acme.test", "--password", "long enough", "--tenant", "acme"],
    ["guests", "list"],
    ["sessions", "list"],
    ["sessions", "stats"],
    ["ops", "list"],
])
def test_commands_that_need_neither_redis_nor_the_key_run_without_them(database_only, conn, secret_key, args):
    seed_teams(conn, secret_key)
    proc = run_cli(database_only, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REDIS_URL" not in proc.stderr and "PROXWATCH_SECRET_KEY" not in proc.stderr


@pytest.mark.parametrize("args", [
    ["servers", "add", "pve9", "https://pve9.example:8006", "--token", TOKEN, "--tenant", "acme"],
    ["servers", "update", "pve1", "--tenant", "acme", "--token", TOKEN],
    ["poll", "--once", "pve1", "--tenant", "acme"],
])
def test_a_command_that_needs_the_key_says_so_and_writes_nothing(database_only, conn, secret_key, args):
    seed_teams(conn, secret_key)
    before = {t: count(conn, t) for t in ("proxmox_servers", "server_credentials", "connection_metrics")}
    proc = run_cli(database_only, *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "PROXWATCH_SECRET_KEY is not set" in proc.stderr and "Traceback" not in proc.stderr
    assert {t: count(conn, t) for t in before} == before
