"""History tiers (issue 10): raw polls partitioned by UTC day, hourly and daily rollups kept exact by
one statement trigger, what a partition lets the API roles see, and what deleting a server leaves."""

from __future__ import annotations

import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.support.seed import act_as
from worker import db, retention
from worker.settings import RetentionSettings


def utc_day(days_ago: int) -> date:
    return datetime.now(timezone.utc).date() - timedelta(days=days_ago)


def at(days_ago: int, hour: int, minute: int = 0) -> datetime:
    d = utc_day(days_ago)
    return datetime(d.year, d.month, d.day, hour, minute, tzinfo=timezone.utc)


def poll(conn, server_id, when, success=True, ms=100) -> int:
    """The worker's insert: a retried poll (same server and scheduled_at) is dropped by the unique key."""
    return conn.execute(
        "insert into connection_metrics (server_id, tenant_id, scheduled_at, success, response_time_ms, error_kind,"
        " error_message) select id, tenant_id, %s, %s, %s, %s, %s from proxmox_servers where id = %s"
        " on conflict (server_id, scheduled_at) do nothing",
        (when, success, ms if success else None, None if success else "timeout", None if success else "no answer",
         server_id)).rowcount


def tiers(conn, server_id, when: datetime) -> tuple:
    hour = conn.execute("select attempts, successes, response_sum_ms, response_count from connection_metrics_hourly"
                        " where server_id = %s and hour = date_trunc('hour', %s::timestamptz, 'UTC')",
                        (server_id, when)).fetchone()
    day = conn.execute("select attempts, successes, response_sum_ms, response_count from connection_metrics_daily"
                       " where server_id = %s and day = %s", (server_id, when.date())).fetchone()
    return (tuple(hour.values()) if hour else None, tuple(day.values()) if day else None)


def test_a_poll_lands_in_its_days_partition_and_a_retry_is_dropped_across_the_key(conn, teams):
    pve1 = teams.servers["pve1"]
    conn.execute("select ensure_metric_partitions(7, %s)", (utc_day(3),))
    # Given a poll three days ago and one now, each retried once
    for when in (at(3, 10), datetime.now(timezone.utc)):
        assert poll(conn, pve1, when) == 1
        assert poll(conn, pve1, when) == 0
    conn.commit()
    # Then each row sits in the partition of its UTC day, once
    rows = conn.execute("select tableoid::regclass::text as part, scheduled_at from connection_metrics"
                        " where server_id = %s order by scheduled_at", (pve1,)).fetchall()
    assert [r["part"] for r in rows] == [f"connection_metrics_p{r['scheduled_at'].astimezone(timezone.utc):%Y%m%d}"
                                         for r in rows]
    assert len(rows) == 2 and rows[0]["part"] != rows[1]["part"]


def test_partitions_are_made_ahead_once_even_when_two_sessions_ask_together(conn, db_url):
    made = [r["ensure_metric_partitions"] for r in conn.execute("select ensure_metric_partitions(10)")]
    conn.commit()
    # The migration already made a week ahead: only the days after it are new, and asking again makes none
    assert made == [f"connection_metrics_p{utc_day(-d):%Y%m%d}" for d in (8, 9, 10)]
    with psycopg.connect(db_url) as a, psycopg.connect(db_url) as b:
        a.execute("select ensure_metric_partitions(12)")
        # b waits on a's advisory lock, then finds the partitions a made
        b_thread_result = []
        t = threading.Thread(target=lambda: b_thread_result.append(
            b.execute("select count(*) from ensure_metric_partitions(12)").fetchone()[0]))
        t.start()
        a.commit()
        t.join(30)
        b.commit()
    assert b_thread_result == [0]
    days = [r["day"] for r in conn.execute("select day from metric_partitions()")]
    assert days == sorted(set(days)) and days[-1] == utc_day(-12)


def test_a_poll_for_a_day_without_partition_is_refused_and_writes_nothing(conn, teams):
    pve1 = teams.servers["pve1"]
    with pytest.raises(psycopg.errors.CheckViolation, match="no partition of relation"):
        poll(conn, pve1, at(40, 12))
    conn.rollback()
    assert conn.execute("select count(*) as n from connection_metrics_daily where server_id = %s",
                        (pve1,)).fetchone()["n"] == 0


def test_a_late_poll_corrects_the_hour_and_the_day_already_rolled_up(conn, teams):
    pve1 = teams.servers["pve1"]
    conn.execute("select ensure_metric_partitions(7, %s)", (utc_day(2),))
    # Given an hour two days ago rolled up from two polls (one answered in 100 ms, one timed out)
    poll(conn, pve1, at(2, 5, 0), True, 100)
    poll(conn, pve1, at(2, 5, 1), False)
    conn.commit()
    assert tiers(conn, pve1, at(2, 5)) == ((2, 1, 100, 1), (2, 1, 100, 1))
    # When a late poll of that hour arrives (and is retried), and one of another hour of that day
    poll(conn, pve1, at(2, 5, 2), True, 300)
    poll(conn, pve1, at(2, 5, 2), True, 300)
    poll(conn, pve1, at(2, 23, 59), True, 200)
    conn.commit()
    # Then the hour counts it once, and the day counts both
    assert tiers(conn, pve1, at(2, 5)) == ((3, 2, 400, 2), (4, 3, 600, 3))
    assert tiers(conn, pve1, at(2, 23))[0] == (1, 1, 200, 1)


def test_a_partition_read_directly_shows_the_api_roles_nothing(conn, teams):
    pve1 = teams.servers["pve1"]
    poll(conn, pve1, datetime.now(timezone.utc))
    conn.commit()
    part = f"connection_metrics_p{utc_day(0):%Y%m%d}"
    member = conn.execute("select user_id from tenant_members limit 1").fetchone()["user_id"]
    for role in ("authenticated", "anon"):
        act_as(conn, member, role)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"select * from public.{part}")
        conn.rollback()


def test_deleting_a_server_removes_its_history_at_every_tier(conn, teams):
    pve1 = teams.servers["pve1"]
    conn.execute("select ensure_metric_partitions(7, %s)", (utc_day(1),))
    poll(conn, pve1, at(1, 3))
    poll(conn, pve1, datetime.now(timezone.utc))
    conn.commit()
    conn.execute("delete from proxmox_servers where id = %s", (pve1,))
    conn.commit()
    for table in ("connection_metrics", "connection_metrics_hourly", "connection_metrics_daily"):
        assert conn.execute(f"select count(*) as n from {table} where server_id = %s", (pve1,)).fetchone()["n"] == 0


# ------------------------------------------------------------------------------------- pruning

RETENTION = RetentionSettings(raw_days=7, hourly_days=400, daily_days=30)


def seed_old_history(conn, server_id) -> None:
    """Raw polls 10, 9, 8, 7 and 1 days ago (one partition each), hourly rows 401 and 399 days old,
    daily rows 31 and 29 days old."""
    conn.execute("select ensure_metric_partitions(7, %s)", (utc_day(10),))
    for days in (10, 9, 8, 7, 1):
        poll(conn, server_id, at(days, 12))
    for table, col, old, young in (("connection_metrics_hourly", "hour", "now() - interval '401 days'",
                                    "now() - interval '399 days'"),
                                   ("connection_metrics_daily", "day", "current_date - 31", "current_date - 29")):
        conn.execute(f"insert into {table} (server_id, tenant_id, {col}, attempts, successes)"
                     f" select id, tenant_id, {old}, 360, 360 from proxmox_servers where id = %s"
                     f" union all select id, tenant_id, {young}, 360, 360 from proxmox_servers where id = %s",
                     (server_id, server_id))
    conn.commit()


def history_left(conn, server_id) -> dict:
    return {
        "raw_days": sorted((utc_day(0) - r["d"]).days for r in conn.execute(
            "select (scheduled_at at time zone 'UTC')::date as d from connection_metrics where server_id = %s",
            (server_id,))),
        "hourly": conn.execute("select count(*) as n from connection_metrics_hourly where server_id = %s"
                               " and hour < now() - interval '398 days'", (server_id,)).fetchone()["n"],
        "daily": conn.execute("select count(*) as n from connection_metrics_daily where server_id = %s"
                              " and day < current_date - 28", (server_id,)).fetchone()["n"],
        "partitions": [r["name"] for r in conn.execute("select name from metric_partitions()")],
    }


def test_prune_drops_whole_old_partitions_and_old_rollup_rows_and_keeps_the_recent(conn, teams):
    pve1 = teams.servers["pve1"]
    seed_old_history(conn, pve1)
    before = history_left(conn, pve1)
    # When the history is pruned with raw 7 days, hourly 400, daily 30
    pruned = retention.prune(conn, RETENTION, batch=1)
    # Then the partitions of days 10, 9, 8 are gone (day 7 is not wholly older than 7 days), with one
    # hourly and one daily row; a second run finds nothing more to do
    assert [p.name for p in pruned.partitions] == [f"connection_metrics_p{utc_day(d):%Y%m%d}" for d in (10, 9, 8)]
    assert (pruned.hourly_rows, pruned.daily_rows) == (1, 1)
    after = history_left(conn, pve1)
    assert after["raw_days"] == [1, 7] and after["hourly"] == 1 and after["daily"] == 1
    assert after["partitions"] == before["partitions"][3:]
    again = retention.prune(conn, RETENTION)
    assert (again.partitions, again.hourly_rows, again.daily_rows) == ([], 0, 0)
    # And a daily retention of 0 keeps the daily rollup forever
    forever = retention.prune(conn, RetentionSettings(raw_days=7, hourly_days=400, daily_days=0))
    assert forever.daily_rows == 0 and history_left(conn, pve1)["daily"] == 1


def test_a_dry_run_says_what_would_go_and_removes_nothing(conn, teams):
    pve1 = teams.servers["pve1"]
    seed_old_history(conn, pve1)
    conn.execute("analyze connection_metrics")
    conn.commit()
    before = history_left(conn, pve1)
    dry = retention.prune(conn, RETENTION, dry_run=True)
    assert [(p.day, p.estimated_rows) for p in dry.partitions] == [(utc_day(d), 1) for d in (10, 9, 8)]
    assert (dry.hourly_rows, dry.daily_rows) == (1, 1)
    assert history_left(conn, pve1) == before


def test_two_pruners_at_once_remove_everything_once_without_error(conn, teams, db_url):
    pve1 = teams.servers["pve1"]
    seed_old_history(conn, pve1)
    results, errors = [], []

    def run():
        try:
            with db.connect(db_url) as own:
                results.append(retention.prune(own, RETENTION, batch=1))
        except Exception as exc:   # noqa: BLE001 - the assertion below shows it
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    # Each expired partition and row went exactly once, whichever pruner took it
    dropped = sorted(p.name for r in results for p in r.partitions)
    assert dropped == [f"connection_metrics_p{utc_day(d):%Y%m%d}" for d in (10, 9, 8)]
    assert sum(r.hourly_rows for r in results) == 1 and sum(r.daily_rows for r in results) == 1
    assert history_left(conn, pve1)["raw_days"] == [1, 7]


def test_an_interrupted_prune_is_finished_by_the_next(conn, teams):
    pve1 = teams.servers["pve1"]
    seed_old_history(conn, pve1)
    # Given a partition detached by a pruner that died before dropping it
    conn.execute(f"alter table connection_metrics detach partition connection_metrics_p{utc_day(10):%Y%m%d}")
    conn.commit()
    pruned = retention.prune(conn, RETENTION)
    assert [(p.name, p.state) for p in pruned.partitions][0] == (f"connection_metrics_p{utc_day(10):%Y%m%d}",
                                                                  "detached")
    assert conn.execute("select to_regclass(%s) as r", (f"public.connection_metrics_p{utc_day(10):%Y%m%d}",)
                        ).fetchone()["r"] is None


# -------------------------------------------------------------------------------------- reading


def history(conn, server_id, hours):
    return conn.execute("select connection_history(%s, %s) as h", (server_id, hours)).fetchone()["h"]


def add_rollup(conn, server_id, table, col, value, attempts, successes, ms=0):
    conn.execute(f"insert into {table} (server_id, tenant_id, {col}, attempts, successes, response_sum_ms,"
                 f" response_count) select id, tenant_id, %s, %s, %s, %s, %s from proxmox_servers where id = %s",
                 (value, attempts, successes, ms * successes, successes if ms else 0, server_id))


def test_history_picks_minutes_hours_or_days_and_leaves_empty_buckets_unknown(conn, teams):
    pve1 = teams.servers["pve1"]
    now = datetime.now(timezone.utc)
    minute = now.replace(second=0, microsecond=0) - timedelta(minutes=5)
    # Given two polls five minutes ago (one answered in 80 ms, one refused) and a day 20 days ago
    poll(conn, pve1, minute + timedelta(seconds=1), True, 80)
    poll(conn, pve1, minute + timedelta(seconds=31), False)
    add_rollup(conn, pve1, "connection_metrics_daily", "day", utc_day(20), 8640, 8640, ms=40)
    conn.commit()
    # ≤ 2 h: per minute from the raw polls
    h = history(conn, pve1, 2)
    assert h["bucket"] == "minute" and len(h["hourly"]) == 120
    by_time = {x["time"]: x for x in h["hourly"]}
    assert by_time[f"{minute:%Y-%m-%dT%H:%M}:00Z"] == {"time": f"{minute:%Y-%m-%dT%H:%M}:00Z", "attempts": 2,
                                                       "successRate": 50.0, "avgResponseTime": 80}
    empty = by_time[f"{minute - timedelta(minutes=1):%Y-%m-%dT%H:%M}:00Z"]
    assert (empty["attempts"], empty["successRate"], empty["avgResponseTime"]) == (0, None, None)
    assert h["hourly"][-1]["time"] == f"{now:%Y-%m-%dT%H:%M}:00Z" or now.second == 0
    # up to 336 h: per hour from the hourly rollup
    for hours in (3, 336):
        h = history(conn, pve1, hours)
        assert h["bucket"] == "hour" and len(h["hourly"]) == hours and h["summary"]["totalAttempts"] == 2
        assert all(x["time"].endswith(":00:00Z") for x in h["hourly"])
    # beyond: per UTC day from the daily rollup, a year at most
    h = history(conn, pve1, 337)
    assert h["bucket"] == "day" and len(h["hourly"]) == 15
    assert h["hourly"][-1]["time"] == f"{utc_day(0)}T00:00:00Z"
    year = history(conn, pve1, 8784)
    assert year["bucket"] == "day" and len(year["hourly"]) == 366
    days = {x["time"]: x for x in year["hourly"]}
    assert days[f"{utc_day(20)}T00:00:00Z"] == {"time": f"{utc_day(20)}T00:00:00Z", "attempts": 8640,
                                                 "successRate": 100.0, "avgResponseTime": 40}
    assert days[f"{utc_day(21)}T00:00:00Z"]["successRate"] is None
    assert year["summary"] == {"totalAttempts": 8642, "successCount": 8641, "avgResponseTime": 40}


@pytest.mark.parametrize("hours", [0, -1, 8785, None])
def test_a_window_outside_one_hour_to_one_year_is_refused_with_a_sentence(conn, teams, hours):
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match=r"p_hours must be between 1 and 8784 \(one year\), not"):
        history(conn, teams.servers["pve1"], hours)


def test_fleet_overview_gives_uptime_over_24_hours_7_30_and_90_days(conn, teams):
    pve1, pve2 = teams.servers["pve1"], teams.servers["pve2"]
    # Given pve1: a poll answered now; whole days 3 (5 of 10), 20 (0 of 10) and 60 days ago (100 of 100)
    poll(conn, pve1, datetime.now(timezone.utc))
    add_rollup(conn, pve1, "connection_metrics_daily", "day", utc_day(3), 10, 5)
    add_rollup(conn, pve1, "connection_metrics_daily", "day", utc_day(20), 10, 0)
    add_rollup(conn, pve1, "connection_metrics_daily", "day", utc_day(60), 100, 100)
    conn.commit()
    rows = {str(r["id"]): r for r in conn.execute("select * from fleet_overview()")}
    cols = ("uptime_24h", "uptime_7d", "uptime_30d", "uptime_90d")
    # Then each window counts what lies in it; pve2, never polled, has no uptime rather than 100 %
    assert [float(rows[pve1][c]) for c in cols] == [100.0, 54.5, 28.6, 87.6]
    assert [rows[pve2][c] for c in cols] == [None] * 4
    assert rows[pve1]["history_simulated_until"] is None
    # And the columns come after the ones callers already read, in order
    names = [d.name for d in conn.execute("select * from fleet_overview()").description]
    assert names[-6:] == ["last_poll_at", *cols, "history_simulated_until"]


def test_fleet_overview_counts_the_hours_of_a_windows_first_partial_day(conn, teams):
    pve1 = teams.servers["pve1"]
    # Given hourly rows 7 days and 1 hour ago (outside 7 d), 6 days 23 hours ago (inside: it is in the
    # partial first day or a whole day, depending on the time of day) — both in the 30-day window
    now_hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    outside, inside = now_hour - timedelta(days=7, hours=1), now_hour - timedelta(days=6, hours=23)
    daily: dict = {}
    for when, ok in ((outside, 0), (inside, 10)):
        add_rollup(conn, pve1, "connection_metrics_hourly", "hour", when, 10, ok)
        daily[when.date()] = (daily.get(when.date(), (0, 0))[0] + 10, daily.get(when.date(), (0, 0))[1] + ok)
    for day, (attempts, ok) in daily.items():
        add_rollup(conn, pve1, "connection_metrics_daily", "day", day, attempts, ok)
    conn.commit()
    row = conn.execute("select uptime_7d, uptime_30d from fleet_overview() where id = %s", (pve1,)).fetchone()
    # When both fall on one UTC day, that day is partial in the 7-day window: only `inside` counts
    if outside.date() == inside.date():
        assert (float(row["uptime_7d"]), float(row["uptime_30d"])) == (100.0, 50.0)
    else:   # `inside` opens a whole day of the window
        assert float(row["uptime_7d"]) == 100.0



def overview(conn) -> dict:
    return {r["name"]: r for r in conn.execute("select * from fleet_overview()")}


def overview_from_rollups(conn) -> dict:
    """fleet_overview() summed from the rollups, as when no summary is current (undone after)."""
    conn.commit()
    conn.execute("update fleet_uptime set through_hour = through_hour - interval '1 hour'")
    rows = overview(conn)
    conn.rollback()
    return rows


def test_fleet_overview_reads_the_hourly_summary_and_late_polls_keep_it_exact(conn, teams):
    pve1 = teams.servers["pve1"]
    now = datetime.now(timezone.utc)
    hour = now.replace(minute=0, second=0, microsecond=0)
    # Given pve1 polled now, hours 3 and 23 hours ago, the first partial day of the 7-day window and
    # whole days 3, 20 and 60 days ago
    poll(conn, pve1, now)
    for when, ok in ((hour - timedelta(hours=3), 8), (hour - timedelta(hours=23), 5),
                     (hour - timedelta(days=7) + timedelta(hours=1), 10)):
        add_rollup(conn, pve1, "connection_metrics_hourly", "hour", when, 10, ok, ms=50)
    for days_ago, ok in ((3, 5), (20, 0), (60, 100)):
        add_rollup(conn, pve1, "connection_metrics_daily", "day", utc_day(days_ago), 100, ok)
    conn.commit()
    before = overview(conn)
    # When the worker's job sums the windows for the last complete hour
    assert retention.refresh_fleet_uptime(conn) == 3
    summary = conn.execute("select through_hour from fleet_uptime where server_id = %s", (pve1,)).fetchone()
    assert summary["through_hour"] == hour - timedelta(hours=1)
    assert retention.refresh_fleet_uptime(conn) == 0        # current: nothing to do
    # Then fleet_overview reads it and says exactly what the rollups say
    assert overview(conn) == before == overview_from_rollups(conn)
    # And late polls, a purge and a poll of the current hour keep it exact
    poll(conn, pve1, hour - timedelta(hours=2, minutes=-1), success=False)     # a late poll
    poll(conn, pve1, now - timedelta(seconds=1), success=False)                # this hour
    add_rollup(conn, pve1, "connection_metrics_daily", "day", utc_day(10), 50, 0)   # a backfilled day
    conn.execute("update connection_metrics_daily set successes = 40 where server_id = %s and day = %s",
                 (pve1, utc_day(3)))
    conn.execute("delete from connection_metrics_hourly where server_id = %s and hour = %s",
                 (pve1, hour - timedelta(hours=23)))
    conn.commit()
    after = overview(conn)
    assert after == overview_from_rollups(conn)
    assert (after["pve1"]["attempts_24h"], after["pve1"]["uptime_90d"]) != (
        before["pve1"]["attempts_24h"], before["pve1"]["uptime_90d"])
    # And a server added since the summary is listed, from the rollups
    conn.execute("insert into proxmox_servers (tenant_id, name, base_url, auth_kind) values (%s, 'pve3',"
                 " 'https://127.0.0.1:12', 'token')", (teams.teams["acme"],))
    conn.commit()
    assert overview(conn)["pve3"]["uptime_24h"] is None and len(overview(conn)) == 4


def test_a_member_sees_the_summary_of_their_own_tenant_only(conn, teams):
    for name in ("pve1", "pveg"):
        poll(conn, teams.servers[name], datetime.now(timezone.utc))
    conn.commit()
    retention.refresh_fleet_uptime(conn)
    act_as(conn, teams.users["bob"])
    assert [r["name"] for r in conn.execute("select name from fleet_overview()")] == ["pveg"]
    assert [str(r["server_id"]) for r in conn.execute("select server_id from fleet_uptime")] == [teams.servers["pveg"]]
    conn.rollback()
    act_as(conn, teams.users["bob"], "anon")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("select * from fleet_uptime")
    conn.rollback()


def test_a_refresh_for_a_barrier_in_the_future_is_refused_with_a_sentence(conn, teams):
    with pytest.raises(psycopg.errors.InvalidParameterValue,
                       match=r"the barrier .* is in the future: pass what fleet_uptime_barrier\(\) returned"):
        conn.execute("select refresh_fleet_uptime(now() + interval '2 hours')")
    conn.rollback()
    assert conn.execute("select count(*) as n from fleet_uptime").fetchone()["n"] == 0


def test_a_refresh_gives_way_to_a_long_transaction_writing_rollups(conn, teams, db_url):
    # Given a transaction that wrote a rollup row and has not ended (a backfill, say)
    with db.connect(db_url) as other:
        add_rollup(other, teams.servers["pve1"], "connection_metrics_daily", "day", utc_day(5), 10, 10)
        # When the job runs: its barrier waits a second at most (writers queue behind it), then gives up
        assert retention.refresh_fleet_uptime(conn) == 0
        assert conn.execute("select count(*) as n from fleet_uptime").fetchone()["n"] == 0
        other.commit()
    # And the next run, with nobody in the way, writes the summary
    assert retention.refresh_fleet_uptime(conn) == 3

# ----------------------------------------------------------------------------- the migration


def test_the_partitioning_migration_keeps_every_existing_poll_and_builds_the_daily_rollup(pg_server):
    # Given a database migrated up to just before the partitioning (sql/compat.sql, then each
    # migration in order, as `supabase db push` applies them), with polls of three days
    root = Path(__file__).resolve().parents[2]
    name = f"pw_mig_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server.url, autocommit=True) as admin:
        admin.execute(f"create database {name}")
    url = pg_server.url.rsplit("/", 1)[0] + "/" + name
    migrations = sorted((root / "supabase" / "migrations").glob("*.sql"))
    before = [m for m in migrations if m.name < "20261130001000"]
    try:
        with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
            conn.execute((root / "sql" / "compat.sql").read_text())
            for m in before:
                conn.execute(m.read_text())
            conn.execute("insert into tenants (name) values ('acme');"
                         "insert into proxmox_servers (tenant_id, name, base_url, auth_kind)"
                         " select id, 'pve1', 'https://pve1.test:8006', 'token' from tenants")
            conn.execute("insert into connection_metrics (server_id, tenant_id, scheduled_at, success, response_time_ms,"
                         " error_kind) select s.id, s.tenant_id, now() - d * interval '1 day' - m * interval '1 minute',"
                         " m % 2 = 0, case when m % 2 = 0 then 10 end, case when m % 2 = 1 then 'timeout' end"
                         " from proxmox_servers s, generate_series(0, 2) d, generate_series(0, 9) m")
            old = conn.execute("select id, scheduled_at, success from connection_metrics order by id").fetchall()
            # When the rest of the migrations run
            for m in migrations[len(before):]:
                conn.execute(m.read_text())
            # Then every poll is there with its id, in the partition of its day; the daily rollup
            # holds the hourly one's days; new polls take ids after the old ones and are rolled up
            moved = conn.execute("select id, scheduled_at, success, tableoid::regclass::text as part"
                                 " from connection_metrics order by id").fetchall()
            assert [(r["id"], r["scheduled_at"], r["success"]) for r in moved] == \
                   [(r["id"], r["scheduled_at"], r["success"]) for r in old]
            assert all(r["part"] == f"connection_metrics_p{r['scheduled_at'].astimezone(timezone.utc):%Y%m%d}"
                       for r in moved)
            assert conn.execute("select sum(attempts) as n, sum(successes) as ok from connection_metrics_daily"
                                ).fetchone() == {"n": 30, "ok": 15}
            new = conn.execute("insert into connection_metrics (server_id, tenant_id, scheduled_at, success,"
                               " response_time_ms) select id, tenant_id, now() + interval '1 second', true, 5"
                               " from proxmox_servers returning id").fetchone()["id"]
            assert new > max(r["id"] for r in old)
            assert conn.execute("select sum(attempts) as n from connection_metrics_daily").fetchone()["n"] == 31
            assert conn.execute("select to_regclass('public.connection_metrics_unpartitioned') as t"
                                ).fetchone()["t"] is None
    finally:
        with psycopg.connect(pg_server.url, autocommit=True) as admin:
            admin.execute(f"drop database if exists {name} with (force)")


def test_the_worker_makes_a_missing_days_partition_instead_of_losing_its_polls(conn, teams, recorder):
    # Given the partition of today gone (the job that makes them a week ahead has not run for long)
    from worker.polling import PollResult

    today = datetime.now(timezone.utc)
    conn.execute(f"drop table connection_metrics_p{today:%Y%m%d}")
    conn.commit()
    # When the worker writes a poll of today
    written = recorder.write([PollResult(server_id=str(teams.servers["pve1"]), scheduled_at=today, created_at=today,
                                         success=True, response_time_ms=12)])
    # Then the partition is made again and the poll is stored, rolled up as usual
    assert written == 1
    assert conn.execute("select count(*) as n from connection_metrics where server_id = %s",
                        (teams.servers["pve1"],)).fetchone()["n"] == 1
    assert tiers(conn, teams.servers["pve1"], today)[0][:2] == (1, 1)
