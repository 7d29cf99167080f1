"""The `proxwatch` command as a person runs it: real subprocesses, a real database, a fake PVE
over HTTPS. Bad input gets one sentence, a non-zero exit, and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import ROOT, run_cli, service_env
from tests.support.seed import TOKEN, count
from tests.support.waiting import free_port


@pytest.fixture
def cli(db_url, redis_server, secret_key, tmp_path):
    env = service_env(db_url, redis_server.url, secret_key, tmp_path)

    def run(*args, ok=True):
        proc = run_cli(env, *args)
        if ok:
            assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc
    return run


def test_add_poll_and_read_history_of_a_server(cli, pve, fingerprint, conn):
    cli("tenants", "add", "acme")
    out = cli("servers", "add", "pve1", pve.url, "--token", TOKEN, "--fingerprint", fingerprint).stdout
    assert "pinned fingerprint" in out and "token auth" in out
    cli("servers", "add", "pve-down", "https://127.0.0.1:1", "--user", "root@pam", "--password", "x",
        "--insecure")
    listing = cli("servers", "list").stdout
    assert "pve1" in listing and "unknown" in listing and "insecure" in listing
    # poll --once exits 0 although one server is down: every poll ran
    polled = cli("poll", "--once").stdout
    assert "ok" in polled and "refused" in polled
    assert count(conn, "connection_metrics") == 2
    one = cli("poll", "--once", "pve1").stdout
    assert "pve1" in one and "pve-down" not in one
    history = json.loads(cli("history", "pve1", "--json", "--hours", "6").stdout)
    assert len(history["hourly"]) == 6
    assert history["summary"]["totalAttempts"] >= 1 and history["summary"]["successCount"] >= 1
    table = cli("history", "pve1").stdout
    assert "polls" in table and "answered" in table
    assert "online" in cli("servers", "list").stdout
    cli("servers", "remove", "pve-down")
    assert "pve-down" not in cli("servers", "list").stdout


@pytest.mark.parametrize("args, sentence", [
    (["servers", "add", "x", "http://10.0.0.1:8006", "--token", TOKEN], "must start with https://"),
    (["servers", "add", "x", "ftp://pve", "--token", TOKEN], "must start with https://"),
    (["servers", "add", "x", "https://pve:8006", "--token", "root@pam=secret"], "USER@REALM!TOKENID=SECRET"),
    (["servers", "add", "x", "https://pve:8006", "--token", TOKEN, "--fingerprint", "12:34"], "SHA-256"),
    (["servers", "add", "x", "https://pve:8006"], "give credentials"),
    (["servers", "add", "x", "https://pve:8006", "--user", "root", "--password", "p"], "needs a realm"),
    (["servers", "add", "x", "https://pve:8006", "--token", TOKEN, "--tenant", "nope"], "no tenant named 'nope'"),
    (["servers", "remove", "ghost"], "no server named 'ghost'"),
    (["poll", "--once", "ghost"], "no server named 'ghost'"),
    (["history", "ghost"], "no server named 'ghost'"),
    (["users", "add", "not-an-email", "--password", "longenough", "--tenant", "acme"], "not an e-mail"),
    (["users", "add", "a@b.c", "--password", "longenough", "--tenant", "acme", "--role", "god"], "role must be"),
])
def test_bad_input_gets_one_sentence_and_writes_nothing(cli, conn, args, sentence):
    cli("tenants", "add", "acme")
    before = {t: count(conn, t) for t in ("proxmox_servers", "server_credentials", "auth.users", "tenant_members")}
    proc = cli(*args, ok=False)
    assert proc.returncode != 0
    assert sentence in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {t: count(conn, t) for t in before} == before


def test_a_duplicate_server_name_is_refused(cli, conn):
    cli("tenants", "add", "acme")
    cli("servers", "add", "pve1", "https://pve.example:8006", "--token", TOKEN)
    proc = cli("servers", "add", "pve1", "https://other.example:8006", "--token", TOKEN, ok=False)
    assert proc.returncode != 0 and "has a server named 'pve1' already" in proc.stderr
    assert count(conn, "proxmox_servers") == 1


def test_users_get_a_bcrypt_hash_and_a_membership(cli, conn):
    cli("tenants", "add", "acme")
    cli("users", "add", "Ops@Example.com", "--password", "correct horse", "--tenant", "acme", "--role", "operator")
    row = conn.execute("select u.email, u.encrypted_password, m.role::text as role from auth.users u "
                       "join tenant_members m on m.user_id = u.id").fetchone()
    assert row["email"] == "ops@example.com" and row["role"] == "operator"
    assert row["encrypted_password"].startswith("$2") and "correct horse" not in row["encrypted_password"]


def test_embedded_mode_starts_its_own_postgres_and_keeps_data_across_restarts(tmp_path):
    home = Path("/tmp") / f"pw-embedded-{os.getpid()}"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PROXWATCH_SECRET_KEY")}
    env.update(PROXWATCH_HOME=str(home), PROXWATCH_PG_PORT=str(free_port()), COLUMNS="200", NO_COLOR="1")
    try:
        def run(*args):
            proc = subprocess.run([sys.executable, "-m", "worker.cli", *args], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=180)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            return proc.stdout
        run("tenants", "add", "homelab")
        run("servers", "add", "pve1", "https://127.0.0.1:1", "--token", TOKEN, "--tenant", "homelab")
        # The database was stopped after each command and started again: the data is still there.
        assert "pve1" in run("servers", "list")
        printed = run("env")
        assert f"DATABASE_URL=postgresql://postgres:" in printed and "REDIS_URL=redis://" in printed
        assert "SUPABASE_URL=http://127.0.0.1:" in printed
        assert (home / "postgres" / "PG_VERSION").exists()
        assert oct((home / "secrets.json").stat().st_mode & 0o777) == "0o600"
    finally:
        subprocess.run(["rm", "-rf", str(home)])


def test_history_over_days_as_table_json_and_csv_and_prune_dry_run(cli, conn):
    cli("tenants", "add", "acme")
    cli("servers", "add", "pve1", "https://127.0.0.1:1", "--token", TOKEN, "--insecure")
    # Given a day of pve1, 3 days ago, in the daily rollup: 90 of 100 polls answered, 40 ms
    conn.execute("insert into connection_metrics_daily (server_id, tenant_id, day, attempts, successes,"
                 " response_sum_ms, response_count) select id, tenant_id, current_date - 3, 100, 90, 3600, 90"
                 " from proxmox_servers where name = 'pve1'")
    conn.commit()
    day = conn.execute("select to_char(current_date - 3, 'YYYY-MM-DD') as d").fetchone()["d"]
    # --days 30: per day, the bucket named in the table
    table = cli("history", "pve1", "--days", "30").stdout
    assert "per day" in table and any(day in line and "100" in line and "90" in line for line in table.splitlines())
    data = json.loads(cli("history", "pve1", "--days", "30", "--json").stdout)
    assert data["bucket"] == "day" and len(data["hourly"]) == 30
    lines = cli("history", "pve1", "--days", "30", "--csv").stdout.splitlines()
    assert lines[0] == "time,bucket,attempts,success_rate,avg_response_ms" and len(lines) == 31
    assert f"{day}T00:00:00Z,day,100,90.0,40" in lines and lines[1].endswith(",day,0,,")
    assert json.loads(cli("history", "pve1", "--hours", "2", "--json").stdout)["bucket"] == "minute"
    # Both windows, or a window over a year, are refused with a sentence
    both = cli("history", "pve1", "--days", "2", "--hours", "2", ok=False)
    assert both.returncode == 2 and "give --hours or --days, not both" in both.stderr
    assert cli("history", "pve1", "--days", "367", ok=False).returncode == 2
    # db prune --dry-run says what each tier would lose, and removes nothing
    dry = cli("db", "prune", "--dry-run").stdout
    assert "raw polls (kept 7 days): would remove 0 partition(s)" in dry
    assert "hourly rollup (kept 400 days): would remove 0 rows" in dry and "daily rollup (kept forever)" in dry
    assert count(conn, "connection_metrics_daily") == 1
