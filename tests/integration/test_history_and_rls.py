"""connection_history's hourly buckets, fleet_overview, row-level security across tenants, and
how credentials are kept (encrypted, unpublished, unreadable)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from tests.support.seed import act_as
from worker import admin


def hour_start(hours_ago: int) -> datetime:
    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    return now - timedelta(hours=hours_ago)


def insert_metric(conn, server, at, success, ms=None):
    # A poll of two days ago (30 hours before 06:00 UTC) needs the day's partition, which the migration
    # made only from yesterday on: make it as `proxwatch db` would for old data
    conn.execute("select public.ensure_metric_partitions(7, %s)", (at.astimezone(timezone.utc).date(),))
    conn.execute(
        "insert into connection_metrics (server_id, tenant_id, scheduled_at, success, response_time_ms, error_kind,"
        " error_message) select id, tenant_id, %s, %s, %s, %s, %s from proxmox_servers where id = %s",
        (at, success, ms, None if success else "timeout", None if success else "no answer", server["id"]))


def test_history_buckets_polls_by_hour_and_leaves_empty_hours_unknown(add_server, conn):
    s = add_server("pve1", "https://127.0.0.1:8006")
    # Three hours ago: 3 of 4 polls answered (100, 200, 300 ms). One hour ago: nothing. Now: 1 of 1.
    for i, (ok, ms) in enumerate([(True, 100), (True, 200), (True, 300), (False, None)]):
        insert_metric(conn, s, hour_start(3) + timedelta(minutes=10 * i), ok, ms)
    insert_metric(conn, s, hour_start(0) + timedelta(seconds=1), True, 50)
    conn.commit()
    h = conn.execute("select connection_history(%s, 24) as h", (s["id"],)).fetchone()["h"]
    assert len(h["hourly"]) == 24
    times = [datetime.fromisoformat(x["time"].replace("Z", "+00:00")) for x in h["hourly"]]
    assert times == sorted(times) and times[-1] == hour_start(0)
    by_time = {t: x for t, x in zip(times, h["hourly"])}
    assert by_time[hour_start(3)] == {"time": by_time[hour_start(3)]["time"], "attempts": 4, "successRate": 75.0,
                                     "avgResponseTime": 200}
    assert by_time[hour_start(1)] == {"time": by_time[hour_start(1)]["time"], "attempts": 0, "successRate": None,
                                     "avgResponseTime": None}
    assert by_time[hour_start(0)]["successRate"] == 100.0
    assert h["summary"] == {"totalAttempts": 5, "successCount": 4, "avgResponseTime": 163}


def test_history_window_and_bad_arguments(add_server, conn):
    s = add_server("pve1", "https://127.0.0.1:8006")
    insert_metric(conn, s, hour_start(30), True, 10)
    conn.commit()
    day = conn.execute("select connection_history(%s) as h", (s["id"],)).fetchone()["h"]
    assert day["summary"]["totalAttempts"] == 0  # 30 h ago is outside the default 24 h window
    week = conn.execute("select connection_history(%s, 48) as h", (s["id"],)).fetchone()["h"]
    assert len(week["hourly"]) == 48 and week["summary"]["totalAttempts"] == 1
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="between 1 and 8784"):
        conn.execute("select connection_history(%s, 0)", (s["id"],))
    conn.rollback()
    with pytest.raises(psycopg.errors.NoDataFound, match="not found"):
        conn.execute("select connection_history(gen_random_uuid(), 24)")
    conn.rollback()


def test_fleet_overview_has_each_servers_status_and_24h_figures(add_server, conn):
    a = add_server("a", "https://127.0.0.1:8006")
    add_server("b", "https://127.0.0.1:8007")
    insert_metric(conn, a, hour_start(2), True, 40)
    insert_metric(conn, a, hour_start(1), False)
    conn.commit()
    rows = {r["name"]: r for r in conn.execute("select * from fleet_overview()").fetchall()}
    assert set(rows) == {"a", "b"}
    assert (rows["a"]["attempts_24h"], rows["a"]["successes_24h"], rows["a"]["avg_response_24h_ms"]) == (2, 1, 40)
    assert rows["b"]["connection_status"] == "unknown" and rows["b"]["attempts_24h"] == 0
    # The latest poll's time, exact, although the published row is refreshed only every few minutes
    assert rows["a"]["last_poll_at"] is not None and rows["b"]["last_poll_at"] is None


@pytest.fixture
def two_tenants(add_server, conn):
    a = add_server("a-server", "https://127.0.0.1:8006", tenant="tenant-a")
    b = add_server("b-server", "https://127.0.0.1:8007", tenant="tenant-b")
    insert_metric(conn, a, hour_start(0), True, 12)
    insert_metric(conn, b, hour_start(0), True, 15)
    conn.commit()
    user_b = admin.add_user(conn, "bob@example.com", "password-b", "tenant-b", "viewer")
    user_a = admin.add_user(conn, "alice@example.com", "password-a", "tenant-a", "admin")
    return a, user_a, user_b


def test_a_user_of_tenant_b_sees_nothing_of_tenant_a_through_functions_or_tables(two_tenants, conn):
    a, user_a, user_b = two_tenants
    tenant_a = conn.execute("select id from tenants where name = 'tenant-a'").fetchone()["id"]
    act_as(conn, user_b["id"])
    assert [r["name"] for r in conn.execute("select name from fleet_overview()")] == ["b-server"]
    for table in ("proxmox_servers", "connection_metrics", "connection_metrics_hourly", "tenants", "tenant_members"):
        rows = conn.execute(f"select * from {table}").fetchall()
        assert rows, table  # tenant B's own rows are visible...
        assert all(r.get("tenant_id", r.get("id")) != tenant_a for r in rows), table  # ...tenant A's are not
    assert conn.execute("select count(*) as n from connection_metrics").fetchone()["n"] == 1
    with pytest.raises(psycopg.errors.NoDataFound):
        conn.execute("select connection_history(%s, 24)", (a["id"],))
    conn.rollback()
    # ...while tenant A's admin sees its own history
    act_as(conn, user_a["id"])
    h = conn.execute("select connection_history(%s, 24) as h", (a["id"],)).fetchone()["h"]
    assert h["summary"]["totalAttempts"] == 1
    conn.rollback()


def test_anon_cannot_read_servers_or_call_the_functions(two_tenants, conn):
    conn.execute("set local role anon")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from fleet_overview()")
    conn.rollback()
    conn.execute("set local role anon")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from proxmox_servers")
    conn.rollback()


def test_nobody_changes_servers_through_the_table(two_tenants, conn):
    _, user_a, user_b = two_tenants
    for user in (user_b, user_a):  # a viewer, and an admin (who uses update_server())
        act_as(conn, user["id"])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("update proxmox_servers set name = 'renamed' returning id")
        conn.rollback()


def test_credentials_are_encrypted_unpublished_and_unreadable(add_server, conn, two_tenants, box):
    from tests.support.seed import TOKEN

    s = add_server("secretive", "https://127.0.0.1:8006")
    row = conn.execute("select * from server_credentials where server_id = %s", (s["id"],)).fetchone()
    secret = TOKEN.split("=", 1)[1]
    assert secret not in json.dumps(row, default=str)
    assert box.open(row["secret_ciphertext"]) == secret
    published = {r["tablename"] for r in conn.execute(
        "select tablename from pg_publication_tables where pubname = 'supabase_realtime'")}
    assert {"proxmox_servers", "connection_metrics"} <= published
    assert "server_credentials" not in published
    _, user_a, _ = two_tenants
    for role in ("authenticated", "anon"):
        act_as(conn, user_a["id"], role)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("select * from server_credentials")
        conn.rollback()


# ------------------------------------------------------------- the 1 h chart and the heartbeat strip

def test_server_polls_lists_each_poll_of_the_window_oldest_first(add_server, conn):
    s = add_server("pve1", "https://127.0.0.1:8006")
    now = datetime.now(timezone.utc)
    insert_metric(conn, s, now - timedelta(minutes=90), True, 5)   # outside the default hour
    insert_metric(conn, s, now - timedelta(minutes=20), False)
    insert_metric(conn, s, now - timedelta(minutes=10), True, 42)
    conn.commit()
    rows = conn.execute("select * from server_polls(%s)", (s["id"],)).fetchall()
    assert [(r["success"], r["response_time_ms"], r["error_kind"]) for r in rows] == [
        (False, None, "timeout"), (True, 42, None)]
    assert len(conn.execute("select * from server_polls(%s, 120)", (s["id"],)).fetchall()) == 3


def test_server_polls_refuses_bad_input_with_a_sentence(add_server, conn):
    s = add_server("pve1", "https://127.0.0.1:8006")
    for minutes in (0, 1441, None):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="between 1 and 1440"):
            conn.execute("select * from server_polls(%s, %s)", (s["id"], minutes))
        conn.rollback()
    with pytest.raises(psycopg.errors.NoDataFound, match="not found"):
        conn.execute("select * from server_polls(gen_random_uuid())")
    conn.rollback()


def test_fleet_heartbeats_gives_each_server_its_last_polls_oldest_first(add_server, conn):
    a = add_server("a", "https://127.0.0.1:8006")
    b = add_server("b", "https://127.0.0.1:8007")
    now = datetime.now(timezone.utc)
    for i in range(5):  # a: ok, fail, ok, fail, ok (oldest first)
        insert_metric(conn, a, now - timedelta(minutes=5 - i), i % 2 == 0, 10 + i if i % 2 == 0 else None)
    conn.commit()
    beats = {r["server_id"]: r["beats"] for r in conn.execute("select * from fleet_heartbeats(3)")}
    assert [(x["ok"], x["ms"]) for x in beats[a["id"]]] == [(True, 12), (False, None), (True, 14)]
    assert beats[b["id"]] == []  # never polled: the strip is all grey
    # The page on screen asks for its own servers only
    rows = conn.execute("select * from fleet_heartbeats(30, array[%s]::uuid[])", (b["id"],)).fetchall()
    assert [r["server_id"] for r in rows] == [b["id"]]
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="between 1 and 100"):
        conn.execute("select * from fleet_heartbeats(0)")
    conn.rollback()


def test_a_user_sees_the_polls_and_heartbeats_of_their_own_tenant_only(two_tenants, conn):
    a, user_a, user_b = two_tenants
    act_as(conn, user_b["id"])
    rows = conn.execute("select * from fleet_heartbeats()").fetchall()
    assert len(rows) == 1 and rows[0]["server_id"] != a["id"] and len(rows[0]["beats"]) == 1
    with pytest.raises(psycopg.errors.NoDataFound):
        conn.execute("select * from server_polls(%s)", (a["id"],))
    conn.rollback()
    conn.execute("set local role anon")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from fleet_heartbeats()")
    conn.rollback()
