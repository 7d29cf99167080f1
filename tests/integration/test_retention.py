"""Retention: the hourly purge deletes audit rows and finished operations past their retention, in
committed batches, and nothing else (recent rows, pending and running operations)."""

from __future__ import annotations

from worker import retention
from worker.schedule import jobs
from worker.settings import RetentionSettings, Settings


def add_audit(conn, tenant_id, days_ago: int, n: int = 1) -> None:
    conn.execute("insert into public.audit_log (tenant_id, actor, action, created_at)"
                 " select %s, 'system', 'test.retention', now() - make_interval(days => %s) from generate_series(1, %s)",
                 (tenant_id, days_ago, n))


def add_operation(conn, tenant_id, server_id, status: str, days_ago: int | None, key: str) -> None:
    conn.execute("insert into public.active_operations (tenant_id, server_id, operation_type, status, target_type,"
                 " target, conflict_key, completed_at, error)"
                 " values (%s, %s, 'ssh_test', %s, 'node', 'pve1', %s,"
                 " case when %s::int is null then null else now() - make_interval(days => %s::int) end,"
                 " case when %s = 'failed' then 'it failed' end)",
                 (tenant_id, server_id, status, key, days_ago, days_ago, status))


def test_the_purge_deletes_only_what_is_past_its_retention_in_batches(conn, teams):
    acme, pve1 = teams.teams["acme"], teams.servers["pve1"]
    # Given: 25 audit rows older than 400 days and 3 younger; operations of every state, old and new.
    add_audit(conn, acme, 401, 25)
    add_audit(conn, acme, 399, 3)
    add_operation(conn, acme, pve1, "completed", 91, "old-done")
    add_operation(conn, acme, pve1, "failed", 120, "old-failed")
    add_operation(conn, acme, pve1, "completed", 89, "new-done")
    add_operation(conn, acme, pve1, "pending", None, "waiting")
    conn.commit()
    audit_before = conn.execute("select count(*) as n from public.audit_log").fetchone()["n"]

    # When: the purge runs with batches of 10.
    purged = retention.purge(conn, RetentionSettings(audit_days=400, operations_days=90), batch=10)

    # Then: the old rows went, in three batches for the audit log; everything else stayed.
    assert (purged.audit_rows, purged.operations) == (25, 2)
    assert conn.execute("select count(*) as n from public.audit_log").fetchone()["n"] == audit_before - 25
    assert conn.execute("select count(*) as n from public.audit_log where created_at < now() - interval '400 days'"
                        ).fetchone()["n"] == 0
    left = {r["conflict_key"] for r in conn.execute("select conflict_key from public.active_operations").fetchall()}
    assert {"new-done", "waiting"} <= left and not {"old-done", "old-failed"} & left
    # A second run finds nothing.
    again = retention.purge(conn, RetentionSettings(audit_days=400, operations_days=90), batch=10)
    assert (again.audit_rows, again.operations) == (0, 0)


def test_a_run_stops_after_its_batches_and_the_next_goes_on(conn, teams):
    add_audit(conn, teams.teams["acme"], 500, 30)
    conn.commit()
    first = retention.purge(conn, RetentionSettings(audit_days=400, operations_days=90), batch=10, max_batches=2)
    second = retention.purge(conn, RetentionSettings(audit_days=400, operations_days=90), batch=10, max_batches=2)
    assert (first.audit_rows, second.audit_rows) == (20, 10)


def test_the_purge_is_scheduled_hourly():
    assert any(j.actor == "purge_expired" and not j.per_server and j.interval_s == 3600 for j in jobs(Settings()))
