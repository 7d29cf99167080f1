-- Retention: what the hourly `purge_expired` job deletes (worker/retention.py), a bounded batch
-- per statement and per transaction, oldest first, so a large backlog never holds one long lock.

-- name: purge_audit_log
-- Audit rows older than the retention; the primary key (identity, in insertion order) finds the
-- oldest first without a scan of the whole table.
with doomed as (
  select id from public.audit_log
  where created_at < now() - make_interval(days => %(days)s)
  order by id
  limit %(batch)s
  for update skip locked
)
delete from public.audit_log a using doomed where a.id = doomed.id;

-- name: purge_finished_operations
-- Completed and failed operations finished longer ago than the retention (their leases cascade);
-- pending and running ones are never touched.
with doomed as (
  select id from public.active_operations
  where status in ('completed', 'failed') and completed_at < now() - make_interval(days => %(days)s)
  order by completed_at
  limit %(batch)s
  for update skip locked
)
delete from public.active_operations o using doomed where o.id = doomed.id;

-- History tiers (worker/retention.py prune): raw polls leave by whole partitions, the rollups by
-- bounded batches. `now() - days` is the cutoff of each tier.

-- name: prune_lock
-- One pruner of raw partitions at a time (several schedulers may send the job at once); the
-- others skip the raw tier for this run. Session-level: held across the autocommitted DETACH.
select pg_try_advisory_lock(hashtext('proxwatch:prune raw partitions')) as locked;

-- name: prune_unlock
select pg_advisory_unlock(hashtext('proxwatch:prune raw partitions')) as unlocked;

-- name: ensure_metric_partitions
-- The raw partitions of yesterday to days_ahead days after today (the missing ones).
select count(*) as created from public.ensure_metric_partitions(%(days_ahead)s);

-- name: ensure_metric_partitions_from
-- The missing raw partitions from a given day (a poll's, UTC) to days_ahead days after today.
select name from public.ensure_metric_partitions(%(days_ahead)s, %(from)s::date) as name;

-- name: expired_metric_partitions
-- Raw partitions whose whole day is older than the retention, and the leftovers of an interrupted
-- prune: a DETACH CONCURRENTLY that did not finish (pending), a detached table not dropped yet.
select p.name, p.day, p.estimated_rows, p.bytes, case when i.inhdetachpending then 'pending' else 'attached' end
       as state
from public.metric_partitions() p
-- to_regclass: a partition another pruner drops meanwhile is left out, not an error
join pg_inherits i on i.inhrelid = to_regclass(format('public.%%I', p.name))
where ((p.day + 1)::timestamp at time zone 'UTC') <= now() - make_interval(days => %(days)s)
   or i.inhdetachpending
union all
select c.relname::text, to_date(substring(c.relname from '_p(\d{8})$'), 'YYYYMMDD'),
       case when c.reltuples >= 0 then c.reltuples::bigint end, pg_total_relation_size(c.oid), 'detached'
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = 'public' and c.relkind = 'r' and not c.relispartition
  and c.relname ~ '^connection_metrics_p\d{8}$'
order by 2;

-- name: detach_metric_partition
-- Run outside a transaction: waits for the transactions that may see the partition, never blocks
-- inserts into the others (SHARE UPDATE EXCLUSIVE on the parent).
alter table public.connection_metrics detach partition public.{partition} concurrently;

-- name: finalize_metric_partition
alter table public.connection_metrics detach partition public.{partition} finalize;

-- name: drop_metric_partition
drop table if exists public.{partition};

-- name: count_expired_hourly
select count(*) as n from public.connection_metrics_hourly
where hour < now() - make_interval(days => %(days)s);

-- name: count_expired_daily
select count(*) as n from public.connection_metrics_daily
where day < (now() at time zone 'UTC')::date - %(days)s;

-- name: purge_hourly
-- Hourly rollup rows older than the retention, a batch at a time (rows are appended in time order,
-- so the oldest are found first without an index on hour).
with doomed as (
  select server_id, hour from public.connection_metrics_hourly
  where hour < now() - make_interval(days => %(days)s)
  limit %(batch)s
  for update skip locked
)
delete from public.connection_metrics_hourly h using doomed
where h.server_id = doomed.server_id and h.hour = doomed.hour;

-- name: purge_daily
with doomed as (
  select server_id, day from public.connection_metrics_daily
  where day < (now() at time zone 'UTC')::date - %(days)s
  limit %(batch)s
  for update skip locked
)
delete from public.connection_metrics_daily d using doomed
where d.server_id = doomed.server_id and d.day = doomed.day;

-- name: fleet_uptime_barrier
-- Waits for the rollup writers in flight (null: every summary is current, nothing to do).
select public.fleet_uptime_barrier() as barrier;

-- name: refresh_fleet_uptime
select public.refresh_fleet_uptime(%(barrier)s) as servers;
