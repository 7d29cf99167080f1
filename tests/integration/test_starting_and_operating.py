"""Starting and operating proxwatch: each command asks only for what it uses, two processes on one
PROXWATCH_HOME share one bootstrap, and the dashboard signs people in by itself only on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest

from tests.support.processes import ROOT, run_cli, service_env, spawn, stop
from tests.support.seed import TOKEN, count, seed_teams
from tests.support.waiting import free_port, wait_until
from worker.embedded.services import EmbeddedPostgres


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


# -------------------------------------------------------------- one home, one bootstrap
@pytest.fixture
def new_home():
    """A fresh PROXWATCH_HOME (under /tmp, so that the postgres user can reach it when the tests run
    as root) and the environment of embedded mode on free ports; the embedded Postgres is stopped
    and the home removed afterwards, whatever the test left behind."""
    home = Path(tempfile.mkdtemp(prefix="pw-race-", dir="/tmp"))
    os.chmod(home, 0o755)
    env = {k: v for k, v in os.environ.items() if k not in (
        "DATABASE_URL", "REDIS_URL", "PROXWATCH_SECRET_KEY", "SUPABASE_URL", "SUPABASE_ANON_KEY",
        "PROXWATCH_DASHBOARD_EMAIL", "PROXWATCH_DASHBOARD_PASSWORD")}
    env.update(PROXWATCH_HOME=str(home), PROXWATCH_PG_PORT=str(free_port()), PROXWATCH_REDIS_PORT=str(free_port()),
               PROXWATCH_SUPABASE_PORT=str(free_port()), PROXWATCH_WEB_PORT=str(free_port()),
               PROXWATCH_GATEWAY_PORT=str(free_port()), PROXWATCH_WORKER_PROCESSES="1",
               PROXWATCH_WORKER_THREADS="2", PYTHONUNBUFFERED="1", COLUMNS="200", NO_COLOR="1")
    yield home, env
    secrets = home / "secrets.json"
    if secrets.exists():
        EmbeddedPostgres(home, int(env["PROXWATCH_PG_PORT"]), json.loads(secrets.read_text())["pg_password"]).stop()
    shutil.rmtree(home, ignore_errors=True)


def test_up_and_a_command_started_at_once_on_a_new_home_share_one_bootstrap(new_home):
    home, env = new_home
    log_path = home.parent / f"{home.name}-up.log"
    with open(log_path, "wb") as log:
        try:
            # Given a new home, when `up` and `servers add` start at the same moment …
            up = spawn(["-m", "worker.cli", "up"], env, log)
            add = subprocess.Popen([sys.executable, "-m", "worker.cli", "servers", "add", "pve1",
                                    "https://127.0.0.1:1", "--token", TOKEN], cwd=ROOT, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            out, err = add.communicate(timeout=600)
            # … the command succeeds, whichever of the two bootstrapped the home …
            assert add.returncode == 0, out + err
            assert "Traceback" not in err
            # … and `up` comes up.
            wait_until(lambda: up.poll() is not None or "dashboard at" in log_path.read_text(errors="replace"),
                       timeout=600, interval=0.2, what="`proxwatch up` started")
            assert up.poll() is None, log_path.read_text(errors="replace")[-3000:]
            # Both see one database: a command now attaches to up's Postgres, the server is there,
            # and there is one local admin (in every tenant: the default one).
            listing = run_cli(env, "servers", "list")
            assert listing.returncode == 0 and "pve1" in listing.stdout, listing.stdout + listing.stderr
            secrets = json.loads((home / "secrets.json").read_text())
            url = f"postgresql://postgres:{secrets['pg_password']}@127.0.0.1:{env['PROXWATCH_PG_PORT']}/postgres"
            with psycopg.connect(url) as conn:
                admins = conn.execute("select count(*) from auth.users").fetchone()[0]
                tenants = [r[0] for r in conn.execute("select name from public.tenants")]
                members = conn.execute("select count(*) from public.tenant_members").fetchone()[0]
            assert (admins, tenants, members) == (1, ["default"], 1)
            # `up` stops cleanly on SIGTERM, and its Postgres with it (the command did not stop it).
            stop(up, signal.SIGTERM, timeout=120)
            assert up.returncode == 0, log_path.read_text(errors="replace")[-3000:]
            assert "Traceback" not in log_path.read_text(errors="replace")
            assert not EmbeddedPostgres(home, int(env["PROXWATCH_PG_PORT"]), secrets["pg_password"]).running()
        finally:
            stop(up)
            log_path.unlink(missing_ok=True)


def test_a_second_up_on_the_same_home_is_refused_with_a_sentence(new_home):
    home, env = new_home
    from worker.embedded import system
    from worker.settings import Settings

    # Given a running `up` (its lock held) …
    with system.home_lock(Settings(home=home), system.UP_LOCK) as held:
        assert held
        # … another `up` says so and starts nothing.
        proc = run_cli(env, "up", timeout=120)
    assert proc.returncode == 2 and "is running on" in proc.stderr and "Traceback" not in proc.stderr
    assert not (home / "postgres").exists()


# ---------------------------------------------- the dashboard signs in by itself on loopback only
def test_on_loopback_the_local_admin_is_signed_in_and_the_page_says_why(monkeypatch, standin, fleet):
    from tests.support.seed import ALICE
    from tests.support.streamlit import APP, app_test, html_tables, sign_in_env

    app = app_test(monkeypatch, APP, sign_in_env(standin, ALICE), address="127.0.0.1")
    assert len(html_tables(app)) == 1, [e.value for e in app.error]
    from dashboard.text import plain

    assert f"Signed in automatically as {plain(ALICE[0])} because the dashboard only listens on this machine " \
           f"({plain('127.0.0.1')})." in [c.value for c in app.caption]


@pytest.mark.parametrize("address", ["0.0.0.0", "192.0.2.7", "::", None])
def test_on_any_other_address_everyone_signs_in(monkeypatch, standin, fleet, address):
    from tests.support.seed import ALICE
    from tests.support.streamlit import APP, app_test, html_tables, sign_in_env

    # Given the local admin's credentials in the environment, and a dashboard reachable from elsewhere …
    app = app_test(monkeypatch, APP, sign_in_env(standin, ALICE), address=address)
    # … nobody is signed in: the sign-in form, and a sentence saying why.
    assert not html_tables(app)
    assert [b.label for b in app.button] == ["Sign in"]
    assert len(app.info) == 1 and "Nobody is signed in automatically" in app.info[0].value
    app.text_input[0].input(ALICE[0])
    app.text_input[1].input(ALICE[1])
    app.button[0].click().run()
    from dashboard.text import plain

    assert len(html_tables(app)) == 1 and f"Signed in as {plain(ALICE[0])}" in [c.value for c in app.caption]
