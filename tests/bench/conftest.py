"""Fixtures and collection for the benchmarks (tests/bench is never part of `make test`).

The fixtures pg_server, template_db, db_url, redis_server, secret_key and pw_home come from
tests/conftest.py (a parent conftest, so pytest already loads it for this directory).

The benchmark files are named bench_*.py; pytest collects them when they are named on the
command line, and this hook also collects them for `pytest tests/bench` (make bench).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.bench.reporting import table


def pytest_collect_file(file_path, parent):
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") \
            and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture(scope="session")
def pw_home():
    """tests/conftest.py's pw_home, with BENCH_PG_PARENT choosing the filesystem the benchmark's
    Postgres cluster lives on (default /tmp, as in the tests): bench_history_tiers.py compares a
    filesystem mounted with online discard against one without."""
    home = Path(tempfile.mkdtemp(prefix="proxwatch-bench-", dir=os.environ.get("BENCH_PG_PARENT", "/tmp")))
    os.chmod(home, 0o755)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def tiers_history(pg_server, template_db):
    """bench_history_tiers.py: a database with a day of raw polls eight days ago, a year of hourly and
    daily rollups and one current poll for SERVERS servers; yields (url, the old day's partition)."""
    from tests.bench.bench_history_tiers import POLLS_PER_DAY, SERVERS, USER

    def _url(dbname):
        return pg_server.url.rsplit("/", 1)[0] + "/" + dbname

    name = f"bench_tiers_{os.getpid()}"
    with psycopg.connect(_url("postgres"), autocommit=True) as admin:
        admin.execute(f"create database {name} template {template_db}")
    url = _url(name)
    old_day = (datetime.now(timezone.utc) - timedelta(days=8)).date()
    part = f"connection_metrics_p{old_day:%Y%m%d}"
    timings = []
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("set synchronous_commit = off")
        tenant = conn.execute("insert into tenants (name) values ('bench') returning id").fetchone()["id"]
        conn.execute("insert into auth.users (id, email) values (%s, 'bench@example.test')", (USER,))
        conn.execute("insert into tenant_members (tenant_id, user_id, role) values (%s, %s, 'viewer')",
                     (tenant, USER))
        conn.execute(
            "insert into proxmox_servers (tenant_id, name, base_url, auth_kind)"
            " select %s, 'pve' || lpad(n::text, 4, '0'), 'https://pve' || n || '.bench.test:8006', 'token'"
            " from generate_series(1, %s) n", (tenant, SERVERS))
        conn.execute("select ensure_metric_partitions(7, %s)", (old_day,))

        t = time.perf_counter()
        # One day of raw polls, straight into its partition, time order (the rollups are built below;
        # a partition's id has no identity of its own in Postgres 15: the parent's sequence gives it).
        conn.execute(f"""
            insert into public.{part} (id, server_id, tenant_id, scheduled_at, created_at, success,
                                       response_time_ms, error_kind, error_message)
            select nextval('public.connection_metrics_id_seq'), s.id, s.tenant_id, at, at + interval '40 ms', ok, case when ok then 20 + (i * 7 + n) %% 180 end,
                   case when not ok then 'timeout' end, case when not ok then 'no answer within 5000 ms' end
            from generate_series(0, {POLLS_PER_DAY - 1}) i
            cross join lateral (select %s::timestamp at time zone 'UTC' + i * interval '10 s' as at,
                                       (i + 0) %% 33 <> 0 as ok) p
            cross join (select id, tenant_id, row_number() over (order by id) as n from proxmox_servers) s
            order by i, s.n""", (old_day,))
        timings.append(("raw day into its partition", time.perf_counter() - t))

        t = time.perf_counter()
        # fleet_overview's summary is computed after the load (in the reading benchmark): its triggers
        # (which correct it for rollup rows changed later) would only add a no-op per past row here.
        conn.execute("alter table public.connection_metrics_hourly disable trigger user")
        conn.execute("alter table public.connection_metrics_daily disable trigger user")
        # Built after the load (faster), as the migration builds it on an existing table.
        conn.execute("drop index public.connection_metrics_hourly_hour_idx")
        conn.execute("""
            insert into public.connection_metrics_hourly (server_id, tenant_id, hour, attempts, successes,
                                                          response_sum_ms, response_count)
            select s.id, s.tenant_id, h, 360, 360 - (extract(hour from h)::int + n) % 12, 
                   (360 - (extract(hour from h)::int + n) % 12) * (20 + n % 180),
                   360 - (extract(hour from h)::int + n) % 12
            from generate_series(date_trunc('hour', now()) - interval '8783 hours', date_trunc('hour', now()),
                                 interval '1 hour') h
            cross join (select id, tenant_id, row_number() over (order by id) as n from proxmox_servers) s
            order by h, s.n""")
        conn.execute("create index connection_metrics_hourly_hour_idx on public.connection_metrics_hourly (hour)")
        timings.append(("a year of hourly rollups", time.perf_counter() - t))
        t = time.perf_counter()
        conn.execute("""
            insert into public.connection_metrics_daily (server_id, tenant_id, day, attempts, successes,
                                                         response_sum_ms, response_count)
            select server_id, min(tenant_id::text)::uuid, (hour at time zone 'UTC')::date, sum(attempts),
                   sum(successes), sum(response_sum_ms), sum(response_count)
            from public.connection_metrics_hourly group by 1, 3 order by 3, 1""")
        timings.append(("the daily rollup from it", time.perf_counter() - t))
        conn.execute("alter table public.connection_metrics_hourly enable trigger user")
        conn.execute("alter table public.connection_metrics_daily enable trigger user")
        conn.execute("insert into public.connection_metrics (server_id, tenant_id, scheduled_at, success,"
                     " response_time_ms) select id, tenant_id, now(), true, 30 from proxmox_servers")
        t = time.perf_counter()
        conn.execute("vacuum analyze")
        timings.append(("vacuum analyze", time.perf_counter() - t))
    table("Setup", ["step", "s"], [(label, f"{s:.1f}") for label, s in timings])
    yield url, part
    with psycopg.connect(_url("postgres"), autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")
