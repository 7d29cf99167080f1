"""`proxwatch sessions …` as a person runs it (real subprocesses, the real database): list, kill,
cleanup, stats, limits; bad input gets one sentence, exit code 2, and writes nothing."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.processes import run_cli, service_env
from tests.support.seed import open_session


@pytest.fixture
def fleet(teams):
    return teams


@pytest.fixture
def cli(db_url, redis_server, secret_key, tmp_path):
    env = service_env(db_url, redis_server.url, secret_key, tmp_path, COLUMNS="220")

    def run(*args, code=0):
        proc = run_cli(env, "sessions", *args)
        assert proc.returncode == code, proc.stdout + proc.stderr
        return proc
    return run


def test_list_kill_cleanup_and_stats(cli, conn, fleet):
    s1 = open_session(conn, fleet.servers["pve1"], fleet.users["olga"], "vnc", "web (qemu/100)")
    open_session(conn, fleet.servers["pveg"], fleet.users["bob"], "ssh", "node g1")
    listed = cli("list").stdout
    assert "web (qemu/100)" in listed and "node g1" in listed and "olga@acme.test" in listed
    rows = json.loads(cli("list", "--protocol", "ssh", "--json").stdout)
    assert [r["target"] for r in rows] == ["node g1"]

    killed = cli("kill", str(s1["id"])[:8]).stdout
    assert "killed (killed by an administrator (command line))" in killed
    conn.commit()
    assert conn.execute("select status from public.connection_sessions where id = %s", (s1["id"],)).fetchone()[
        "status"] == "killed"
    assert "is killed already" in cli("kill", str(s1["id"]), code=2).stderr
    assert "there is no session" in cli("kill", "ffffffff", code=2).stderr
    assert "killed" in cli("list", "--all").stdout

    time.sleep(1.2)
    assert "1 stale session expired" in cli("cleanup", "--max-age", "1s").stdout
    stats = json.loads(cli("stats", "--json").stdout)
    assert (stats["total"], stats["successful"], stats["active"]) == (2, 2, 0)
    assert "0 open (max 100)" in cli("stats").stdout


def test_limits_are_shown_and_changed_and_bad_input_writes_nothing(cli, conn, fleet):
    assert "at most 100 open sessions in all, 10 per server" in cli("limits").stdout
    changed = cli("limits", "--max-total", "40", "--max-per-host", "5", "--grace", "2m", "--retention", "1d").stdout
    assert "at most 40 open sessions in all, 5 per server; expired after 0:02:00" in changed
    assert "pve1: at most 3" in cli("limits", "--server", "pve1", "--max", "3").stdout
    assert "pve1" not in cli("limits", "--server", "pve1", "--clear").stdout.split("kept")[1]
    for args, sentence in [(("--max-total", "0"), "--max-total must be between 1 and 100000, not 0"),
                           (("--grace", "soon"), "'soon' is not a duration"),
                           (("--max", "3"), "--max and --clear need --server NAME"),
                           (("--server", "nope", "--max", "3"), "there is no server named 'nope'")]:
        assert sentence in cli("limits", *args, code=2).stderr
    assert "is not a duration" in cli("cleanup", "--max-age", "5 parsecs", code=2).stderr
    conn.commit()
    cfg = conn.execute("select max_total, max_per_host from public.connection_session_settings").fetchone()
    assert (cfg["max_total"], cfg["max_per_host"]) == (40, 5)
