"""Incidents: the outage periods the worker writes in the same transaction as the status change
(real polls of a fake PVE over HTTPS, recorded in real Postgres), read through incidents() under
row-level security and listed by `proxwatch incidents`."""

from __future__ import annotations

import json
from datetime import timedelta

import psycopg
import pytest

from tests.support.incidents import incident_arrays
from tests.support.processes import run_cli, service_env
from tests.support.seed import call
from worker import db
from worker.polling import PollResult, utcnow

STEP = timedelta(seconds=10)




class Polls:
    """Polls of one server at t0, t0 + 10 s, … (each poll's scheduled_at is the next step)."""

    def __init__(self, poller, recorder, server_id):
        self.poller, self.recorder, self.server_id = poller, recorder, str(server_id)
        self.at = utcnow().replace(microsecond=0) - timedelta(hours=1)
        self.results: list[PollResult] = []

    def poll(self, n: int = 1) -> list[PollResult]:
        done = []
        for _ in range(n):
            self.at += STEP
            result = self.poller.poll(self.server_id, self.at)
            self.recorder.write([result])
            done.append(result)
        self.results += done
        return done


def incidents(conn, server_id) -> list[dict]:
    conn.commit()
    return conn.execute("select * from public.incidents where server_id = %s order by started_at",
                        (server_id,)).fetchall()


def status(conn, server_id) -> str:
    conn.commit()
    return conn.execute("select connection_status::text as s from public.proxmox_servers where id = %s",
                        (server_id,)).fetchone()["s"]


def tenant_of(conn, server_id):
    return conn.execute("select tenant_id from public.proxmox_servers where id = %s", (server_id,)).fetchone()["tenant_id"]


def down(pve, times: int) -> None:
    pve.fail("GET", "/cluster/status", 500, "hostname lookup 'pve1' failed", times=times)


def test_going_offline_opens_exactly_one_incident_with_the_first_error(pve, add_server, poller, recorder, conn,
                                                                      settings):
    s = add_server("pve1", pve.url)
    polls = Polls(poller, recorder, s["id"])
    polls.poll(2)
    # When the server fails more polls than it takes to go offline
    down(pve, settings.offline_after + 2)
    failed = polls.poll(settings.offline_after + 2)
    # Then one incident is open, from the poll that made it offline, with that poll's error
    assert status(conn, s["id"]) == "offline"
    [incident] = incidents(conn, s["id"])
    assert incident["ended_at"] is None and incident["status"] == "offline"
    assert incident["started_at"] == failed[settings.offline_after - 1].scheduled_at
    assert incident["error_kind"] == "http" and "hostname lookup" in incident["error_message"]
    assert incident["tenant_id"] == tenant_of(conn, s["id"])


def test_recovery_closes_the_incident_at_the_recovering_poll(pve, add_server, poller, recorder, conn, settings):
    s = add_server("pve1", pve.url)
    polls = Polls(poller, recorder, s["id"])
    polls.poll()
    down(pve, settings.offline_after)
    failed = polls.poll(settings.offline_after)
    # When it answers again: degraded while the failures are among its last 10 polls, then online
    answered = polls.poll(10)
    assert status(conn, s["id"]) == "online"
    [incident] = incidents(conn, s["id"])
    # Online once fewer than 2 of the last 10 polls failed: at the 9th answer
    recovered_at = answered[8].scheduled_at
    assert incident["status"] == "offline"  # it went through degraded: one incident, the worst kind
    assert incident["started_at"] == failed[-1].scheduled_at
    assert incident["ended_at"] == recovered_at
    row = conn.execute("select * from public.incidents(%s)", (s["id"],)).fetchone()
    assert row["duration_s"] == (recovered_at - failed[-1].scheduled_at).total_seconds()
    assert row["server_name"] == "pve1"


def test_degraded_then_offline_is_one_incident_of_kind_offline(pve, add_server, poller, recorder, conn, settings):
    s = add_server("pve1", pve.url)
    polls = Polls(poller, recorder, s["id"])
    polls.poll()
    # Given two lost polls and an answer: degraded
    down(pve, 2)
    polls.poll(2)
    [answer] = polls.poll()
    assert status(conn, s["id"]) == "degraded"
    [incident] = incidents(conn, s["id"])
    assert incident["status"] == "degraded" and incident["started_at"] == answer.scheduled_at
    first_error = incident["error_message"]
    assert "polls failed" in first_error
    # When it then goes offline
    down(pve, settings.offline_after)
    polls.poll(settings.offline_after)
    assert status(conn, s["id"]) == "offline"
    # Then it is the same incident, now offline, its first error kept and the latest beside it
    [incident] = incidents(conn, s["id"])
    assert incident["status"] == "offline" and incident["ended_at"] is None
    assert incident["started_at"] == answer.scheduled_at
    assert incident["error_message"] == first_error and incident["error_kind"] == "http"
    assert "hostname lookup" in incident["last_error_message"]
    # And a first answer again (degraded: the failures are recent) does not lower it to degraded
    polls.poll()
    assert status(conn, s["id"]) == "degraded"
    [incident] = incidents(conn, s["id"])
    assert incident["status"] == "offline" and incident["ended_at"] is None


def test_a_retried_write_of_the_same_polls_creates_nothing_new(pve, add_server, poller, recorder, conn, settings):
    s = add_server("pve1", pve.url)
    polls = Polls(poller, recorder, s["id"])
    down(pve, settings.offline_after)
    polls.poll(settings.offline_after)
    before = incidents(conn, s["id"])
    assert len(before) == 1
    # When the whole batch is written again (a retried message)
    assert recorder.write(polls.results) == 0
    # Then nothing changed
    assert incidents(conn, s["id"]) == before


def test_the_incident_statement_is_idempotent_and_cannot_open_two(add_server, pve, conn):
    s = add_server("pve1", pve.url)
    at = utcnow()
    offline = {"connection_status": "offline", "health_check_error": "refused", "health_check_error_kind": "connect"}
    params = incident_arrays([(s["id"], offline, at)])
    for _ in range(2):   # a retried transaction after its first attempt committed
        conn.execute(db.q("record_incidents"), params)
    conn.commit()
    [incident] = incidents(conn, s["id"])
    assert incident["error_message"] == "refused"
    # A later poll with another message updates the latest only; the first stays
    conn.execute(db.q("record_incidents"),
                 incident_arrays([(s["id"], {**offline, "health_check_error": "timed out"}, at + STEP)]))
    [incident] = incidents(conn, s["id"])
    assert (incident["error_message"], incident["last_error_message"]) == ("refused", "timed out")
    # And the database itself refuses a second open incident
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("insert into public.incidents (tenant_id, server_id, status, started_at)"
                     " values (%s, %s, 'offline', now())", (tenant_of(conn, s["id"]), s["id"]))
    conn.rollback()


def test_late_older_polls_neither_close_nor_reopen(pve, add_server, poller, recorder, conn, settings):
    s = add_server("pve1", pve.url)
    polls = Polls(poller, recorder, s["id"])
    [before_outage] = polls.poll()
    down(pve, settings.offline_after)
    failed = polls.poll(settings.offline_after)
    # When a successful poll from before the outage arrives late, the incident stays open
    late_ok = PollResult(server_id=str(s["id"]), scheduled_at=before_outage.scheduled_at - STEP,
                         created_at=before_outage.created_at - STEP, success=True, response_time_ms=5,
                         pve_version=pve.version, nodes_online=1, nodes_total=1)
    assert recorder.write([late_ok]) == 1
    assert status(conn, s["id"]) == "offline"
    [incident] = incidents(conn, s["id"])
    assert incident["ended_at"] is None
    # When it recovers and then a failed poll from inside the outage arrives late
    polls.poll(10)
    [closed] = incidents(conn, s["id"])
    assert closed["ended_at"] is not None
    late_failure = PollResult(server_id=str(s["id"]), scheduled_at=failed[0].scheduled_at + timedelta(seconds=1),
                              created_at=failed[0].created_at, success=False, response_time_ms=None,
                              error_kind="timeout", error_message="late")
    assert recorder.write([late_failure]) == 1
    # Then nothing reopens: the closed incident is as it was and no other is open
    assert status(conn, s["id"]) == "online"
    assert incidents(conn, s["id"]) == [closed]


def test_deleting_a_server_removes_its_incidents(add_server, pve, conn):
    s = add_server("pve1", pve.url)
    conn.execute(db.q("record_incidents"), incident_arrays(
        [(s["id"], {"connection_status": "degraded", "health_check_error": "x", "health_check_error_kind": None},
          utcnow())]))
    conn.execute(db.q("delete_server"), {"id": s["id"]})
    conn.commit()
    assert incidents(conn, s["id"]) == []


# ------------------------------------------------------------------------------------ reading

def open_incident(conn, server_id, at=None, message="connection refused"):
    conn.execute(db.q("record_incidents"), incident_arrays(
        [(server_id, {"connection_status": "offline", "health_check_error": message,
                      "health_check_error_kind": "connect"}, at or utcnow())]))
    conn.commit()


def test_another_tenant_sees_no_incident(teams, conn, uconn):
    open_incident(conn, teams.servers["pve1"])
    mine = call(uconn, teams.users["victor"], "select * from public.incidents()")
    assert [r["server_name"] for r in mine] == ["pve1"] and mine[0]["ended_at"] is None
    assert call(uconn, teams.users["bob"], "select * from public.incidents()") == []
    assert call(uconn, teams.users["bob"], "select * from public.incidents(%s)", (teams.servers["pve1"],)) == []
    assert call(uconn, teams.users["bob"], "select * from public.incidents") == []
    assert len(call(uconn, teams.users["victor"], "select * from public.incidents")) == 1
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, teams.users["alice"], "update public.incidents set ended_at = now()")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, None, "select * from public.incidents()")


def test_incidents_filters_open_ones_and_checks_its_limit(teams, conn, uconn):
    past = utcnow() - timedelta(hours=2)
    open_incident(conn, teams.servers["pve2"], at=past)
    conn.execute(db.q("record_incidents"), {"server_id": [teams.servers["pve2"]], "status": ["online"],
                                            "at": [past + timedelta(minutes=5)], "error_kind": [None],
                                            "error_message": [None]})
    open_incident(conn, teams.servers["pve1"])
    alice = teams.users["alice"]
    rows = call(uconn, alice, "select * from public.incidents()")
    assert [r["server_name"] for r in rows] == ["pve1", "pve2"]   # newest first
    assert rows[1]["duration_s"] == 300
    assert [r["server_name"] for r in call(uconn, alice, "select * from public.incidents(p_open_only => true)")] \
        == ["pve1"]
    assert len(call(uconn, alice, "select * from public.incidents(p_limit => 1)")) == 1
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        call(uconn, alice, "select * from public.incidents(p_limit => 0)")


def test_incidents_are_published_with_rls_and_a_full_replica_identity(conn):
    row = conn.execute("select c.relrowsecurity as rls, c.relreplident as ident from pg_class c"
                       " where c.oid = 'public.incidents'::regclass").fetchone()
    assert row == {"rls": True, "ident": "f"}
    assert conn.execute("select count(*) as n from pg_publication_tables where pubname = 'supabase_realtime'"
                        " and tablename = 'incidents'").fetchone()["n"] == 1
    assert conn.execute("select public.live_mark(array['incidents']) as m").fetchone()["m"] == "incidents=0/0"


# ------------------------------------------------------------------------------------------ CLI

def test_the_cli_lists_open_incidents_and_json_parses(db_url, redis_server, secret_key, tmp_path, teams, conn):
    open_incident(conn, teams.servers["pve1"], message="connection refused by 127.0.0.1:9")
    past = utcnow() - timedelta(hours=3)
    open_incident(conn, teams.servers["pveg"], at=past)
    conn.execute(db.q("record_incidents"), {"server_id": [teams.servers["pveg"]], "status": ["online"],
                                            "at": [past + timedelta(minutes=2)], "error_kind": [None],
                                            "error_message": [None]})
    conn.commit()
    env = service_env(db_url, redis_server.url, secret_key, tmp_path)

    def cli(*args):
        proc = run_cli(env, "incidents", *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    table = cli()
    assert "pve1" in table and "pveg" in table and "open" in table and "2 min 0 s" in table
    assert "connection refused by 127.0.0.1:9" in table
    listed = json.loads(cli("--open", "--json"))
    assert [(r["server_name"], r["status"], r["ended_at"]) for r in listed] == [("pve1", "offline", None)]
    assert [r["server_name"] for r in json.loads(cli("--server", "pveg", "--json"))] == ["pveg"]
    assert "no open incidents" in cli("--open", "--server", "pveg")
    missing = run_cli(env, "incidents", "--server", "ghost")
    assert missing.returncode == 2 and "no server named 'ghost'" in missing.stderr
    assert "Traceback" not in missing.stderr


# ------------------------------------------------------------------------------------ dashboard

def incident_tables(app) -> list:
    return [d.value for d in app.dataframe if "First error" in d.value.columns]


def test_the_fleet_page_shows_recent_incidents_and_the_servers_own(monkeypatch, standin, fleet, db_url):
    from tests.support.seed import ALICE, BOB
    from tests.support.streamlit import APP, app_test, sign_in_env

    # Given pve-beta (acme) offline since 3 minutes ago, an earlier outage of pve-alpha that is over,
    # and pve-gamma (globex) degraded
    now = utcnow()
    with db.connect(db_url) as conn:
        beta = {"connection_status": "offline", "health_check_error": "The server refused the connection.",
                "health_check_error_kind": "refused"}
        degraded = {"connection_status": "degraded", "health_check_error": "1 of 2 cluster nodes offline",
                    "health_check_error_kind": None}
        online = {"connection_status": "online", "health_check_error": None, "health_check_error_kind": None}
        conn.execute(db.q("record_incidents"), incident_arrays([
            (fleet.servers["pve-alpha"], beta, now - timedelta(hours=2)),
            (fleet.servers["pve-gamma"], degraded, now - timedelta(minutes=1))]))
        conn.execute(db.q("record_incidents"), incident_arrays([
            (fleet.servers["pve-alpha"], online, now - timedelta(hours=2) + timedelta(minutes=5))]))
        conn.execute(db.q("record_incidents"), incident_arrays(
            [(fleet.servers["pve-beta"], beta, now - timedelta(minutes=3))]))
        conn.commit()
    # When alice opens the fleet page
    app = app_test(monkeypatch, APP, sign_in_env(standin, ALICE))
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert any(h.value == "Recent incidents" for h in app.subheader)
    recent, alphas = incident_tables(app)
    # Then acme's incidents are listed newest first, the open one as open, globex's not at all
    assert recent["Server"].tolist() == ["pve-beta", "pve-alpha"]
    assert recent["Ended"].tolist()[0] == "open" and recent["Duration"].tolist()[0].endswith("so far")
    assert recent["Duration"].tolist()[1] == "5 min" and recent["Kind"].tolist() == ["● offline", "● offline"]
    assert recent["First error"].tolist()[0] == "The server refused the connection."
    # And the open server (pve-alpha, the first) shows its own
    assert "Server" not in alphas.columns and len(alphas) == 1
    app.selectbox(key="server").select(fleet.servers["pve-delta"]).run()
    assert len(incident_tables(app)) == 1
    assert any("No outages recorded." == c.value for c in app.caption)
    # And bob sees globex's only
    app = app_test(monkeypatch, APP, sign_in_env(standin, BOB))
    assert incident_tables(app)[0]["Server"].tolist() == ["pve-gamma"]
