"""The active-connections registry in a real, migrated database: limits under concurrency, heartbeats
that cost no Realtime message, stale expiry, retention, kill, statistics, audit, and the API's
filters, pagination and row-level security across teams."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tests.support.seed import USERS, add_guest, call, open_session
from worker import db, sessions
from worker.sessions import Registry, SessionRefused

API = "select * from public.active_connections(%s, %s, %s, %s, %s)"


@pytest.fixture
def fleet(teams):
    return teams


def set_limits(conn, **kw):
    conn.execute(db.q("update_session_settings"), {"max_total": None, "max_per_host": None, "stale_after": None,
                                                   "retention": None, **kw})
    conn.commit()


def open_count(conn, server_id=None) -> int:
    return conn.execute("select count(*) as n from public.connection_sessions where status = 'open'"
                        " and (%s::uuid is null or server_id = %s)", (server_id, server_id)).fetchone()["n"]


async def open_many(db_url, server_ids: list[str], user_id: str, connections: int = 60):
    """Open one session per entry of server_ids, all at once, through the gateway's Registry."""
    pool = AsyncConnectionPool(db_url, min_size=connections, max_size=connections, open=False,
                               kwargs={"row_factory": dict_row, "autocommit": True})
    await pool.open(wait=True)
    registry = Registry(pool, "test")
    start = asyncio.Event()

    async def one(sid):
        await start.wait()
        try:
            return await registry.open(user_id=user_id, server_id=sid, protocol="vnc", target="web (qemu/100)")
        except SessionRefused as exc:
            return exc

    try:
        tasks = [asyncio.create_task(one(sid)) for sid in server_ids]
        await asyncio.sleep(0.05)
        start.set()
        return await asyncio.gather(*tasks)
    finally:
        await pool.close()


def test_200_simultaneous_opens_against_a_global_limit_of_50_never_exceed_50(conn, db_url, fleet):
    # Given a global limit of 50 and a per-host limit that does not bind
    set_limits(conn, max_total=50, max_per_host=1000)
    servers = [fleet.servers["pve1"], fleet.servers["pve2"], fleet.servers["pveg"]]
    # When 200 opens race (spread over three servers, 60 database connections at once)
    results = asyncio.run(open_many(db_url, [servers[i % 3] for i in range(200)], fleet.users["olga"]))
    # Then exactly 50 are open and every other one got the sentence
    opened = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, SessionRefused)]
    assert len(opened) == 50 and len(refused) == 150
    assert {str(r) for r in refused} == {"maximum number of connections (50) reached"}
    assert open_count(conn) == 50


def test_the_per_host_limit_holds_under_concurrency_and_names_the_host(conn, db_url, fleet):
    set_limits(conn, max_total=1000, max_per_host=1000)
    conn.execute(db.q("set_host_limit"), {"server_id": fleet.servers["pve1"], "max_sessions": 20})
    conn.commit()
    results = asyncio.run(open_many(db_url, [fleet.servers["pve1"]] * 100 + [fleet.servers["pve2"]] * 30,
                                    fleet.users["olga"]))
    refused = [r for r in results if isinstance(r, SessionRefused)]
    assert open_count(conn, fleet.servers["pve1"]) == 20
    assert open_count(conn, fleet.servers["pve2"]) == 30   # the other host is not limited by pve1's limit
    assert len(refused) == 80
    assert {str(r) for r in refused} == {"maximum number of connections to host pve1 (20) reached"}


def test_opening_and_closing_are_audited_and_a_second_close_changes_nothing(conn, fleet):
    s = open_session(conn, fleet.servers["pve1"], fleet.users["olga"], client_ip="198.51.100.7")
    assert s["status"] == "open" and str(s["tenant_id"]) == fleet.teams["acme"] and str(s["client_ip"]) == "198.51.100.7"
    assert s["user_email"] == "olga@acme.test"
    assert conn.execute(db.q("close_session"), {"id": s["id"], "reason": "the browser closed the console"}
                        ).fetchone()["closed"] is True
    assert conn.execute(db.q("close_session"), {"id": s["id"], "reason": "again"}).fetchone()["closed"] is False
    conn.commit()
    row = conn.execute("select status, close_reason, closed_at from public.connection_sessions where id = %s",
                       (s["id"],)).fetchone()
    assert row["status"] == "closed" and row["close_reason"] == "the browser closed the console" and row["closed_at"]
    actions = [r["action"] for r in conn.execute(
        "select action from public.audit_log where target_id = %s order by id", (str(s["id"]),))]
    assert actions == ["connection.session.open", "connection.session.close"]


def test_a_heartbeat_does_not_rewrite_the_published_row(conn, fleet):
    s = open_session(conn, fleet.servers["pve1"], fleet.users["olga"])
    before = conn.execute("select xmin::text as x from public.connection_sessions where id = %s", (s["id"],)).fetchone()
    hb_before = conn.execute("select last_seen_at from public.connection_heartbeats where session_id = %s",
                             (s["id"],)).fetchone()["last_seen_at"]
    time.sleep(0.05)
    gone = conn.execute(db.q("heartbeat_sessions"), {"ids": [s["id"]]}).fetchall()
    conn.commit()
    assert gone == []
    after = conn.execute("select xmin::text as x from public.connection_sessions where id = %s", (s["id"],)).fetchone()
    hb_after = conn.execute("select last_seen_at from public.connection_heartbeats where session_id = %s",
                            (s["id"],)).fetchone()["last_seen_at"]
    assert before == after                      # connection_sessions (published) untouched
    assert hb_after > hb_before                 # the heartbeat went to the side table
    published = {r["tablename"] for r in conn.execute(
        "select tablename from pg_publication_tables where pubname = 'supabase_realtime'")}
    assert {"guests", "connection_sessions"} <= published and "connection_heartbeats" not in published


def test_a_session_without_heartbeat_is_expired_after_the_grace_and_one_with_heartbeat_is_not(conn, fleet):
    quiet = open_session(conn, fleet.servers["pve1"], fleet.users["olga"])
    alive = open_session(conn, fleet.servers["pve1"], fleet.users["olga"])
    time.sleep(1.3)
    conn.execute(db.q("heartbeat_sessions"), {"ids": [alive["id"]]})
    conn.commit()
    assert sessions.cleanup(conn, timedelta(seconds=1)) == 1
    rows = {r["id"]: r for r in conn.execute("select id, status, close_reason from public.connection_sessions")}
    assert rows[alive["id"]]["status"] == "open"
    assert rows[quiet["id"]]["status"] == "expired"
    assert rows[quiet["id"]]["close_reason"].startswith("no heartbeat for 00:00:01")
    audit = conn.execute("select actor, details from public.audit_log where target_id = %s"
                         " and action = 'connection.session.close'", (str(quiet["id"]),)).fetchone()
    assert audit["actor"] == "cron" and audit["details"]["status"] == "expired"
    # A heartbeat for an expired session reports it gone, so its gateway drops it.
    gone = [r["id"] for r in conn.execute(db.q("heartbeat_sessions"), {"ids": [quiet["id"], alive["id"]]})]
    assert gone == [quiet["id"]]


def test_the_periodic_job_uses_the_configured_grace_and_removes_closed_sessions_after_the_retention(conn, fleet):
    set_limits(conn, stale_after=timedelta(seconds=1), retention=timedelta(minutes=1))
    old = open_session(conn, fleet.servers["pve1"], fleet.users["olga"])
    conn.execute(db.q("close_session"), {"id": old["id"], "reason": "done"})
    conn.execute("update public.connection_sessions set closed_at = now() - interval '2 minutes' where id = %s",
                 (old["id"],))
    recent = open_session(conn, fleet.servers["pve1"], fleet.users["olga"])
    conn.commit()
    time.sleep(1.2)
    assert sessions.expire_and_purge(conn) == (1, 1)
    left = {r["id"]: r["status"] for r in conn.execute("select id, status from public.connection_sessions")}
    assert left == {recent["id"]: "expired"}


def test_cleanup_refuses_a_bad_age_with_a_sentence(conn, uconn, fleet):
    with pytest.raises(sessions.RegistryError, match="between 1 second and 30 days"):
        sessions.cleanup(conn, timedelta(seconds=0))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only admins can clean up"):
        call(uconn, fleet.users["olga"], "select public.cleanup_stale_connections('1 minute')")


def test_an_admin_kills_a_session_and_others_cannot(conn, uconn, fleet):
    s = open_session(conn, fleet.servers["pve1"], fleet.users["olga"])
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only an admin of the team can kill"):
        call(uconn, fleet.users["olga"], "select public.kill_session(%s)", (s["id"],))
    with pytest.raises(psycopg.errors.NoDataFound, match="not found"):
        call(uconn, fleet.users["bob"], "select public.kill_session(%s)", (s["id"],))   # another team's admin
    result = call(uconn, fleet.users["alice"], "select public.kill_session(%s) as r", (s["id"],), many=False)["r"]
    assert result["status"] == "killed" and result["close_reason"] == "killed by alice@acme.test"
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="is killed already"):
        call(uconn, fleet.users["alice"], "select public.kill_session(%s)", (s["id"],))
    audit = conn.execute("select user_id, actor, details from public.audit_log where action = 'connection.session.kill'"
                         ).fetchall()
    assert len(audit) == 1 and str(audit[0]["user_id"]) == fleet.users["alice"] and audit[0]["actor"] == "user"
    assert audit[0]["details"]["session_user_email"] == "olga@acme.test"


def test_active_connections_filters_pages_and_hides_other_teams(conn, uconn, fleet):
    u = fleet.users
    open_session(conn, fleet.servers["pve1"], u["olga"], "vnc", "web (qemu/100)")
    open_session(conn, fleet.servers["pve1"], u["alice"], "term", "ct (lxc/200)")
    open_session(conn, fleet.servers["pve2"], u["olga"], "ssh", "node pve1")
    open_session(conn, fleet.servers["pveg"], u["bob"], "vnc", "db (qemu/300)")
    closed = open_session(conn, fleet.servers["pve2"], u["alice"], "vnc", "old (qemu/101)")
    conn.execute(db.q("close_session"), {"id": closed["id"], "reason": "done"})
    conn.commit()

    def rows(user, team=None, protocol=None, who=None, limit=50, offset=0):
        return call(uconn, u[user], API, (team, protocol, who, limit, offset))

    # Every member of acme sees acme's three open sessions, newest first; never globex's.
    seen = rows("victor")
    assert [r["target"] for r in seen] == ["node pve1", "ct (lxc/200)", "web (qemu/100)"]
    assert {r["team_name"] for r in seen} == {"acme"} and seen[0]["total_count"] == 3
    assert seen[0]["server_name"] == "pve2" and seen[0]["protocol_icon"] == "key"
    assert [r["target"] for r in rows("bob")] == ["db (qemu/300)"]
    # Filters: team, personal, protocol, user.
    assert len(rows("alice", team=fleet.teams["acme"])) == 3
    assert [r["target"] for r in rows("olga", team="personal")] == ["node pve1", "web (qemu/100)"]
    assert [r["protocol"] for r in rows("alice", protocol="term")] == ["term"]
    assert [r["user_email"] for r in rows("alice", who=u["olga"])] == ["olga@acme.test"] * 2
    # Pagination: the total stays the whole count.
    page = rows("alice", limit=2, offset=2)
    assert [r["target"] for r in page] == ["web (qemu/100)"] and page[0]["total_count"] == 3


def test_active_connections_refuses_bad_input(uconn, fleet):
    u = fleet.users
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="not a member of team"):
        call(uconn, u["olga"], API, (fleet.teams["globex"], None, None, 50, 0))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="must be a team id or 'personal'"):
        call(uconn, u["olga"], API, ("acme", None, None, 50, 0))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="p_limit must be between 1 and 500"):
        call(uconn, u["olga"], API, (None, None, None, 0, 0))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="unknown protocol rdp"):
        call(uconn, u["olga"], API, (None, "rdp", None, 50, 0))
    # Anonymous callers cannot run the API at all.
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        call(uconn, None, API, (None, None, None, 50, 0))


def test_summary_user_connections_and_stats(conn, uconn, fleet):
    u = fleet.users
    open_session(conn, fleet.servers["pve1"], u["olga"], "vnc")
    open_session(conn, fleet.servers["pve1"], u["olga"], "term")
    open_session(conn, fleet.servers["pveg"], u["bob"], "ssh")
    conn.execute(db.q("session_failure"), {"server_id": fleet.servers["pve1"]})
    conn.commit()
    every = call(uconn, u["alice"], "select * from public.connection_summary(false)")
    assert [(r["server_name"], r["active_sessions"], r["vnc"], r["term"]) for r in every] == \
        [("pve1", 2, 1, 1), ("pve2", 0, 0, 0)]
    active = call(uconn, u["alice"], "select * from public.connection_summary(true)")
    assert [r["server_name"] for r in active] == ["pve1"]
    mine = call(uconn, u["olga"], "select public.user_connections() as c", many=False)["c"]
    assert mine["count"] == 2 and {c["protocol"] for c in mine["connections"]} == {"vnc", "term"}
    assert call(uconn, u["alice"], "select public.user_connections(%s) as c", (u["olga"],), many=False)["c"]["count"] == 2
    # A teammate sees whose sessions they are (not the client IP: tests/integration/test_api_write_paths.py);
    # another team sees none of them.
    assert call(uconn, u["victor"], "select public.user_connections(%s) as c", (u["olga"],), many=False)["c"]["count"] == 2
    assert call(uconn, u["bob"], "select public.user_connections(%s) as c", (u["olga"],), many=False)["c"]["count"] == 0
    stats = call(uconn, u["alice"], "select public.session_stats() as s", many=False)["s"]
    assert (stats["total"], stats["successful"], stats["failed"], stats["active"]) == (3, 2, 1, 2)
    assert stats["by_protocol"] == {"vnc": 1, "term": 1, "ssh": 0}
    assert [(h["server_name"], h["active"], h["max"]) for h in stats["per_host"]] == [("pve1", 2, 10), ("pve2", 0, 10)]
    assert stats["limits"] == {"max_total": 100, "max_per_host": 10, "stale_after_s": 300, "retention_s": 604800}
    # The service role (CLI) sees everything.
    assert sessions.stats(conn)["active"] == 3


def test_guests_overview_and_console_nodes_follow_team_membership(conn, uconn, fleet):
    add_guest(conn, fleet.servers["pve1"], 100, "web")
    add_guest(conn, fleet.servers["pveg"], 300, "db", node="g1")
    assert [r["name"] for r in call(uconn, fleet.users["victor"], "select * from public.guests_overview()")] == ["web"]
    assert [r["name"] for r in call(uconn, fleet.users["bob"], "select * from public.guests_overview()")] == ["db"]
    nodes = call(uconn, fleet.users["victor"], "select * from public.console_nodes()")
    assert [(r["server_name"], r["node"], r["ssh_configured"]) for r in nodes] == [("pve1", "pve1", False)]
    assert len(USERS) == 4
