"""The rollups of the worker's writes (migration rollup_pending): the writer's transaction queues its
deltas in connection_metrics_rollup_pending, durable with the polls, and a fold adds them to the hourly
and daily rollups. Whatever interleaves — two writers, two folds, retried polls, late polls of past
hours and days, a writer killed between its commit and its fold — the rollups end equal to a group-by
of the raw rows, and every poll counts once."""

from __future__ import annotations

import queue
import random
import subprocess
import sys
import threading
from datetime import timedelta

import psycopg
import pytest
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from tests.support.processes import ROOT, spawn, stop
from tests.support.rollup_writer import results as killed_writer_results
from tests.support.waiting import wait_until
from worker import db
from worker.polling import PollResult, Recorder, fold_params, utcnow

RAW_HOURLY = """
select server_id, date_trunc('hour', scheduled_at, 'UTC') as hour, count(*)::integer as attempts,
       (count(*) filter (where success))::integer as successes,
       coalesce(sum(response_time_ms) filter (where success), 0)::bigint as response_sum_ms,
       (count(response_time_ms) filter (where success))::integer as response_count
from connection_metrics group by 1, 2 order by 1, 2"""
RAW_DAILY = """
select server_id, (scheduled_at at time zone 'UTC')::date as day, count(*)::integer as attempts,
       (count(*) filter (where success))::integer as successes,
       coalesce(sum(response_time_ms) filter (where success), 0)::bigint as response_sum_ms,
       (count(response_time_ms) filter (where success))::integer as response_count
from connection_metrics group by 1, 2 order by 1, 2"""
HOURLY = ("select server_id, hour, attempts, successes, response_sum_ms, response_count"
          " from connection_metrics_hourly order by 1, 2")
DAILY = ("select server_id, day, attempts, successes, response_sum_ms, response_count"
         " from connection_metrics_daily order by 1, 2")


def assert_rollups_equal_the_raw_rows(conn) -> None:
    conn.rollback()  # a fresh snapshot
    assert conn.execute("select count(*) as n from connection_metrics_rollup_pending").fetchone()["n"] == 0
    assert conn.execute(HOURLY).fetchall() == conn.execute(RAW_HOURLY).fetchall()
    assert conn.execute(DAILY).fetchall() == conn.execute(RAW_DAILY).fetchall()
    conn.rollback()


def polls(server_ids: list[str], ticks: int, every: timedelta, seed: int = 1) -> list[list[PollResult]]:
    """One message per tick (every server once), the newest tick in the current hour."""
    rnd = random.Random(seed)
    newest = utcnow().replace(second=0, microsecond=0)
    out = []
    for t in range(ticks):
        at = newest - every * t
        msg = []
        for sid in server_ids:
            ok = rnd.random() < 0.8
            msg.append(PollResult(server_id=sid, scheduled_at=at, created_at=at, success=ok,
                                  response_time_ms=rnd.randint(20, 400) if ok else None,
                                  error_kind=None if ok else "timeout",
                                  error_message=None if ok else "The server did not answer in time."))
        out.append(msg)
    return out


@pytest.fixture
def servers(add_server, conn):
    ids = [str(add_server(f"pve{i}", f"https://pve{i}.example.test:8006")["id"]) for i in range(6)]
    conn.commit()
    return ids


def test_two_writers_and_two_folds_count_each_poll_once_retries_and_late_polls_included(pool, settings, conn, servers):
    # Given polls of the last 50 hours (past hours and days: late polls), each message delivered twice
    # (a retry after a lost acknowledgement), handed by 6 threads to two workers' recorders
    messages = polls(servers, ticks=150, every=timedelta(minutes=20))
    work: queue.SimpleQueue = queue.SimpleQueue()
    for m in messages + messages[::-1]:
        work.put(m)
    writers = [Recorder(pool, settings), Recorder(pool, settings)]
    errors: list[str] = []

    def hand_over(k: int) -> None:
        try:
            while True:
                try:
                    msg = work.get_nowait()
                except queue.Empty:
                    return
                writers[k % 2].record_many(msg)
                k += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(repr(exc))

    done = threading.Event()
    folds = [0, 0]

    def fold(k: int) -> None:
        # And two more folds running all the time beside the writers' own
        folder = Recorder(pool, settings)
        try:
            while not done.is_set():
                folder.fold()
                folds[k] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=hand_over, args=(k,)) for k in range(6)]
    folders = [threading.Thread(target=fold, args=(k,)) for k in range(2)]
    for t in folders + threads:
        t.start()
    for t in threads:
        t.join(120)
    done.set()
    for t in folders:
        t.join(60)
    assert not errors, errors[0]
    assert all(folds), folds

    # When the last deltas are folded (what the writer threads do when idle, or the job)
    Recorder(pool, settings).fold()

    # Then every poll is stored once, and the hourly and daily rollups are the group-by of the raw rows
    assert conn.execute("select count(*) as n from connection_metrics").fetchone()["n"] == 150 * len(servers)
    assert_rollups_equal_the_raw_rows(conn)
    assert conn.execute("select sum(attempts) as n from connection_metrics_daily").fetchone()["n"] == 150 * len(servers)
    # And each server's status was decided from its newest polls (whichever writer and fold saw them):
    # answering (online or degraded) when the newest succeeded, offline after OFFLINE_AFTER failures
    outcomes: dict[str, list[bool]] = {}
    for r in conn.execute("select server_id, success from connection_metrics order by server_id, scheduled_at desc"):
        outcomes.setdefault(str(r["server_id"]), []).append(r["success"])
    status = {str(r["id"]): r["status"] for r in conn.execute(
        "select id, connection_status::text as status from proxmox_servers")}
    conn.rollback()
    for sid, flags in outcomes.items():
        if flags[0]:
            assert status[sid] in ("online", "degraded"), (sid, status[sid], flags[:10])
        elif not any(flags[:settings.offline_after]):
            assert status[sid] == "offline", (sid, status[sid], flags[:10])


def test_a_second_fold_waits_for_the_first_and_takes_only_what_it_left(pool, settings, conn, uconn, db_url, servers):
    recorder = Recorder(pool, settings)
    first_batch, second_batch, third_batch = polls(servers, ticks=3, every=timedelta(minutes=1))
    recorder.write(first_batch, fold=False)
    recorder.write(second_batch, fold=False)
    with db.connect(db_url) as a:
        # Given a fold that took both pending rows and has not committed yet
        first = a.execute(db.q("fold_rollup"), fold_params(settings)).fetchone()
        assert (first["pending"], first["polls"]) == (2 * len(servers), 2 * len(servers))
        # And a writer that commits meanwhile (writers never wait for a fold)
        recorder.write(third_batch, fold=False)
        # When a second fold starts
        second: dict = {}
        other = threading.Thread(target=lambda: second.update(recorder.fold()))
        other.start()
        # Then it waits for the first …
        wait_until(lambda: uconn.execute(
            "select count(*) as n from pg_stat_activity where wait_event_type = 'Lock'"
            " and query like '%fold_connection_metrics_rollup%'").fetchone()["n"] == 1, 10, what="the second fold waits")
        a.commit()
        other.join(10)
    # … and then takes only the row committed after the first began
    assert (second["pending"], second["polls"]) == (len(servers), len(servers))
    assert_rollups_equal_the_raw_rows(conn)


def test_the_writer_folds_when_idle_and_the_status_follows(pool, settings, conn, servers):
    recorder = Recorder(pool, settings)
    [batch] = polls(servers, ticks=1, every=timedelta(minutes=1), seed=5)
    # When a message's polls are recorded (acknowledged once the writer thread commits them)
    recorder.record_many(batch)
    assert conn.execute("select count(*) as n from connection_metrics").fetchone()["n"] == len(batch)
    conn.rollback()
    # Then the idle writer folds them by itself, without a further call …
    wait_until(lambda: (conn.rollback(), conn.execute(
        "select coalesce(sum(attempts), 0) as n from connection_metrics_hourly").fetchone()["n"])[1] == len(batch),
        5, what="the idle writer folds")
    assert_rollups_equal_the_raw_rows(conn)
    # … and in the same transaction each server's status and 24 h success rate follow its poll
    rows = {str(r["id"]): r for r in conn.execute(
        "select id, connection_status::text as status, success_rate, last_health_check_at from proxmox_servers")}
    conn.rollback()
    assert {sid: r["success_rate"] for sid, r in rows.items()} == {r.server_id: (100 if r.success else 0) for r in batch}
    assert all(r["last_health_check_at"] is not None for r in rows.values())
    # (a single failed poll is not enough to go offline: that server stays as it was, unknown)
    assert {sid: r["status"] for sid, r in rows.items()} == {r.server_id: ("online" if r.success else "unknown")
                                                            for r in batch}


def test_a_writer_killed_between_commit_and_fold_loses_nothing_the_job_folds_it(conn, servers, services_env,
                                                                                redis_server, tmp_path):
    # Given a worker whose writer committed polls of three hours and died before folding them
    writer = subprocess.Popen([sys.executable, "-m", "tests.support.rollup_writer", *servers], cwd=ROOT,
                              env=services_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert writer.stdout.readline().strip() == "committed"
    finally:
        writer.kill()
        writer.wait(10)
    expected = killed_writer_results(servers)
    assert conn.execute("select count(*) as n from connection_metrics").fetchone()["n"] == len(expected)
    assert conn.execute("select count(*) as n from connection_metrics_rollup_pending").fetchone()["n"] == len(expected)
    assert conn.execute("select count(*) as n from connection_metrics_hourly").fetchone()["n"] == 0
    conn.rollback()

    # When a worker runs the periodic fold_rollup job (worker/schedule.py)
    with open(tmp_path / "worker.log", "wb") as log:
        worker = spawn(["-m", "dramatiq", "worker.broker", "worker.actors", "--processes", "1", "--threads", "1"],
                       services_env, log)
        try:
            RedisBroker(url=redis_server.url).enqueue(Message(
                queue_name="polls", actor_name="fold_rollup", args=(utcnow().isoformat(),), kwargs={}, options={}))
            wait_until(lambda: (conn.rollback(), conn.execute(
                "select count(*) as n from connection_metrics_rollup_pending").fetchone()["n"])[1] == 0,
                60, what="the job folds the dead writer's deltas")
        finally:
            stop(worker)

    # Then the rollups hold every poll the dead writer committed, once
    assert_rollups_equal_the_raw_rows(conn)
    assert conn.execute("select sum(attempts) as n from connection_metrics_hourly").fetchone()["n"] == len(expected)


def test_other_writers_keep_the_direct_rollup(conn, servers):
    # A plain insert (COPY, SQL, the demo's backfill) is in the rollups when it commits
    conn.execute("insert into connection_metrics (server_id, tenant_id, scheduled_at, created_at, success,"
                 " response_time_ms) select id, tenant_id, now(), now(), true, 50 from proxmox_servers")
    conn.commit()
    assert conn.execute("select count(*) as n from connection_metrics_rollup_pending").fetchone()["n"] == 0
    assert_rollups_equal_the_raw_rows(conn)


def test_a_worker_of_the_previous_release_folds_with_the_default_rules(pool, settings, conn, servers):
    # Given polls written and not folded (as a new worker leaves them)
    recorder = Recorder(pool, settings)
    [batch] = polls(servers, ticks=1, every=timedelta(minutes=1), seed=3)
    recorder.write(batch, fold=False)
    # When a worker of the previous release folds the old way (no arguments, three columns)
    row = conn.execute("select pending, polls, lag_s from public.fold_connection_metrics_rollup()").fetchone()
    conn.commit()
    # Then the rollups and the servers' status are as a current fold leaves them
    assert (row["pending"], row["polls"]) == (len(batch), len(batch))
    assert_rollups_equal_the_raw_rows(conn)
    status = {str(r["id"]): r["status"] for r in conn.execute(
        "select id, connection_status::text as status from proxmox_servers")}
    conn.rollback()
    assert status == {r.server_id: ("online" if r.success else "unknown") for r in batch}


def test_a_fold_with_impossible_rules_is_refused_and_takes_nothing(pool, settings, conn, servers):
    recorder = Recorder(pool, settings)
    [batch] = polls(servers, ticks=1, every=timedelta(minutes=1), seed=4)
    recorder.write(batch, fold=False)
    for bad in ({**fold_params(settings), "offline_after": 0},
                {**fold_params(settings), "timeout_min_ms": 5000, "timeout_max_ms": 1000}):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="offline_after >= 1"):
            conn.execute(db.q("fold_rollup"), bad)
        conn.rollback()
    assert conn.execute("select count(*) as n from connection_metrics_rollup_pending").fetchone()["n"] == len(batch)
    conn.rollback()
