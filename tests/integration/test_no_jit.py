"""No statement of proxwatch is compiled by JIT (migration no_jit): the planner's estimates for lookups
over every daily partition pass Postgres' jit_above_cost however small the data, and compiling cost
hundreds of times the statement (alert_check: ~400 ms of LLVM for a 6 ms statement, every 30 s)."""

from __future__ import annotations

import pytest

from worker import db


def jit_compiled(conn, sql: str, params=None) -> list[str]:
    """The statements that JIT compiled while `sql` ran — `sql` itself first when it was — with every
    statement's estimate above the threshold (jit_above_cost = 0), from auto_explain (nested statements
    included)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    conn.execute("load 'auto_explain'")
    for key, value in {"auto_explain.log_min_duration": "0", "auto_explain.log_nested_statements": "on",
                       "client_min_messages": "log", "jit": "on", "jit_above_cost": "0"}.items():
        conn.execute("select set_config(%s, %s, false)", (key, value))
    conn.execute(sql, params)
    conn.rollback()
    return [" ".join(n.split("Query Text:", 1)[-1].split())[:60] for n in notices if "\nJIT:" in n]


def test_every_function_of_the_schema_runs_without_jit(conn):
    missing = [r["f"] for r in conn.execute(
        "select p.oid::regprocedure::text as f from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
        " join pg_language l on l.oid = p.prolang"
        " where n.nspname = 'public' and l.lanname in ('sql', 'plpgsql')"
        "   and not exists (select 1 from pg_depend d where d.classid = 'pg_proc'::regclass and d.objid = p.oid"
        "                   and d.deptype = 'e')"
        "   and not coalesce('jit=off' = any(p.proconfig), false)"
        " order by 1").fetchall()]
    assert missing == [], f"functions without `set jit = off` (a create or replace dropped it?): {missing}"


@pytest.mark.parametrize("label, sql", [
    ("the alert check, every 30 s", "select * from public.alert_check(now())"),
    ("the fleet page's 1 h chart", "select public.connection_history(%(server)s, 1)"),
    ("every server's heartbeats", "select * from public.fleet_heartbeats(30, null)"),
    ("the fold of the rollups and the status", "select * from public.fold_connection_metrics_rollup(3, 300, 1000, 10000)"),
])
def test_no_statement_inside_a_function_is_compiled_whatever_the_estimates(conn, add_server, label, sql):
    # Given a server with polls, and a session that would compile every statement (as a large fleet's
    # estimates make Postgres do: alert_check's were 6,272,875, the threshold is 100,000)
    server = add_server("jit", "https://jit.example.test:8006")["id"]
    conn.execute("insert into connection_metrics (server_id, tenant_id, scheduled_at, success, response_time_ms)"
                  " select %(s)s, tenant_id, now() - n * interval '10 seconds', true, 20"
                  " from proxmox_servers, generate_series(1, 100) n where id = %(s)s", {"s": server})
    conn.commit()
    # When the function runs
    compiled = jit_compiled(conn, sql, {"server": server})
    # Then only the caller's own statement was compiled (so JIT works here), none of the function's
    assert compiled and compiled[0].startswith("select"), (label, compiled)
    assert len(compiled) == 1, (label, compiled)
