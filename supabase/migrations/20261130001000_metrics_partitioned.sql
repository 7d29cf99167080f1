-- History that lasts (issue 10), part 1: raw polls partitioned by day, and a daily rollup.
--
-- connection_metrics becomes a table partitioned by range of scheduled_at, one partition per UTC
-- day (connection_metrics_pYYYYMMDD). Pruning raw polls then drops whole partitions (DETACH …
-- CONCURRENTLY, then DROP: worker/retention.py), a cost that does not grow with the table.
--
-- What stays: the columns, the unique (server_id, scheduled_at) a retried poll runs into, the
-- tenant index, row-level security and its policy, the grants, the rollup statement trigger, the
-- cascade from proxmox_servers, and Realtime inserts (the publication publishes the partitions'
-- changes under the parent's name: publish_via_partition_root). What changes: the primary key is
-- (id, scheduled_at) — a partitioned table's unique indexes must hold the partition key — and the
-- replica identity FULL asked for by 20261130000200_replica_identity.sql is set on every
-- partition (a partitioned table's own setting does not reach its partitions).
--
-- Partitions are made ahead by ensure_metric_partitions(days_ahead): here for the days of the
-- existing rows up to a week ahead, then by the hourly `purge_expired` job. There is no DEFAULT
-- partition (it would forbid DETACH CONCURRENTLY and make every new partition scan it): a poll
-- for a day without a partition is refused by Postgres ("no partition of relation
-- "connection_metrics" found for row") and nothing of its statement is written. The scheduler only
-- issues polls for now, which the partitions made ahead always cover.
--
-- connection_metrics_daily: one row per server and UTC day, kept exact by the same statement
-- trigger as the hourly rollup (only the rows really inserted reach it: a retried poll that hits
-- the unique key is not counted, a late one adds to the hour and day it belongs to).

alter table public.connection_metrics rename to connection_metrics_unpartitioned;
alter index public.connection_metrics_pkey rename to connection_metrics_unpartitioned_pkey;
alter index public.connection_metrics_server_id_scheduled_at_key
  rename to connection_metrics_unpartitioned_server_id_scheduled_at_key;
alter index public.connection_metrics_tenant_idx rename to connection_metrics_unpartitioned_tenant_idx;
alter sequence public.connection_metrics_id_seq rename to connection_metrics_unpartitioned_id_seq;
alter table public.connection_metrics_unpartitioned
  rename constraint connection_metrics_server_id_fkey to connection_metrics_unpartitioned_server_id_fkey;
alter table public.connection_metrics_unpartitioned
  rename constraint connection_metrics_check to connection_metrics_unpartitioned_check;
alter table public.connection_metrics_unpartitioned
  rename constraint connection_metrics_error_kind_check to connection_metrics_unpartitioned_error_kind_check;
alter table public.connection_metrics_unpartitioned
  rename constraint connection_metrics_response_time_ms_check
  to connection_metrics_unpartitioned_response_time_ms_check;

create table public.connection_metrics (
  id bigint generated always as identity,
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  tenant_id uuid not null,
  scheduled_at timestamptz not null,
  created_at timestamptz not null default now(),
  success boolean not null,
  response_time_ms integer check (response_time_ms >= 0),
  error_kind text check (error_kind in
    ('timeout', 'refused', 'dns', 'network', 'tls', 'auth', 'http', 'bad_response', 'config')),
  error_message text,
  used_fallback boolean not null default false,
  primary key (id, scheduled_at),
  -- A retried poll message carries the same (server_id, scheduled_at): it never counts twice.
  unique (server_id, scheduled_at),
  check (success = (error_kind is null))
) partition by range (scheduled_at);
create index connection_metrics_tenant_idx on public.connection_metrics (tenant_id, scheduled_at);

-- One row per server and UTC day, the long-lived tier.
create table public.connection_metrics_daily (
  server_id uuid not null references public.proxmox_servers (id) on delete cascade,
  tenant_id uuid not null,
  day date not null,
  attempts integer not null default 0,
  successes integer not null default 0,
  response_sum_ms bigint not null default 0,
  response_count integer not null default 0,
  primary key (server_id, day)
);

-- The partitions of the days from p_from (default: yesterday) to p_days_ahead days after today,
-- UTC, those missing only; returns the names it created. Each partition gets the replica identity
-- FULL of its parent's contract, row-level security and no grants for the API roles. Serialized by an advisory lock, so two schedulers running it at
-- once create each partition once.
create function public.ensure_metric_partitions(p_days_ahead integer default 7, p_from date default null)
returns setof text
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  today date := (now() at time zone 'UTC')::date;
  d date;
  part text;
begin
  if p_days_ahead is null or p_days_ahead < 0 or p_days_ahead > 366 then
    raise exception 'p_days_ahead must be between 0 and 366, not %', p_days_ahead using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(hashtext('proxwatch:connection_metrics partitions'));
  for d in select generate_series(coalesce(p_from, today - 1), today + p_days_ahead, interval '1 day')::date loop
    part := 'connection_metrics_p' || to_char(d, 'YYYYMMDD');
    if to_regclass('public.' || part) is null then
      execute format('create table public.%I partition of public.connection_metrics'
                     ' for values from (%L) to (%L)', part,
                     (d::timestamp at time zone 'UTC'), ((d + 1)::timestamp at time zone 'UTC'));
      execute format('alter table public.%I replica identity full', part);
      -- A partition is a table of its own: reached directly, the parent's policy does not apply.
      -- Nobody but the worker reads it so (row-level security on without a policy, no grants).
      execute format('alter table public.%I enable row level security', part);
      execute format('revoke all on public.%I from public, anon, authenticated', part);
      return next part;
    end if;
  end loop;
end
$$;
revoke execute on function public.ensure_metric_partitions(integer, date) from public, anon, authenticated;

-- The raw partitions with their day, row estimate (null before the partition was first analyzed)
-- and size on disk: pruning's and `proxwatch db prune`'s view.
create function public.metric_partitions()
returns table (name text, day date, estimated_rows bigint, bytes bigint)
language sql stable security definer set search_path = public, pg_temp as $$
  select c.relname::text, to_date(substring(c.relname from '_p(\d{8})$'), 'YYYYMMDD'),
         case when c.reltuples >= 0 then c.reltuples::bigint end, pg_total_relation_size(c.oid)
  from pg_inherits i join pg_class c on c.oid = i.inhrelid
  where i.inhparent = 'public.connection_metrics'::regclass
  order by 2
$$;
revoke execute on function public.metric_partitions() from public, anon, authenticated;

select public.ensure_metric_partitions(7, (select min(scheduled_at at time zone 'UTC')::date
                                          from public.connection_metrics_unpartitioned));

insert into public.connection_metrics overriding system value
select id, server_id, tenant_id, scheduled_at, created_at, success, response_time_ms, error_kind,
       error_message, used_fallback
from public.connection_metrics_unpartitioned;
select setval(pg_get_serial_sequence('public.connection_metrics', 'id'),
              greatest(coalesce((select max(id) from public.connection_metrics), 0), 1),
              (select count(*) > 0 from public.connection_metrics));

insert into public.connection_metrics_daily (server_id, tenant_id, day, attempts, successes, response_sum_ms,
                                             response_count)
select server_id, min(tenant_id::text)::uuid, (hour at time zone 'UTC')::date, sum(attempts), sum(successes),
       sum(response_sum_ms), sum(response_count)
from public.connection_metrics_hourly
group by server_id, (hour at time zone 'UTC')::date;

drop table public.connection_metrics_unpartitioned;

-- The rollups, hourly and daily, from the rows one statement really inserted.
create or replace function public.connection_metrics_rollup() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
begin
  insert into public.connection_metrics_hourly as h
    (server_id, tenant_id, hour, attempts, successes, response_sum_ms, response_count)
  select server_id, min(tenant_id::text)::uuid, date_trunc('hour', scheduled_at, 'UTC'),
         count(*), count(*) filter (where success),
         coalesce(sum(response_time_ms) filter (where success), 0),
         count(response_time_ms) filter (where success)
  from new_rows
  group by server_id, date_trunc('hour', scheduled_at, 'UTC')
  order by 1, 3
  on conflict (server_id, hour) do update set
    attempts = h.attempts + excluded.attempts,
    successes = h.successes + excluded.successes,
    response_sum_ms = h.response_sum_ms + excluded.response_sum_ms,
    response_count = h.response_count + excluded.response_count;
  insert into public.connection_metrics_daily as d
    (server_id, tenant_id, day, attempts, successes, response_sum_ms, response_count)
  select server_id, min(tenant_id::text)::uuid, (scheduled_at at time zone 'UTC')::date,
         count(*), count(*) filter (where success),
         coalesce(sum(response_time_ms) filter (where success), 0),
         count(response_time_ms) filter (where success)
  from new_rows
  group by server_id, (scheduled_at at time zone 'UTC')::date
  order by 1, 3
  on conflict (server_id, day) do update set
    attempts = d.attempts + excluded.attempts,
    successes = d.successes + excluded.successes,
    response_sum_ms = d.response_sum_ms + excluded.response_sum_ms,
    response_count = d.response_count + excluded.response_count;
  return null;
end
$$;

create trigger connection_metrics_rollup after insert on public.connection_metrics
  referencing new table as new_rows for each statement execute function public.connection_metrics_rollup();

alter table public.connection_metrics enable row level security;
alter table public.connection_metrics_daily enable row level security;
create policy metrics_read on public.connection_metrics for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
create policy metrics_daily_read on public.connection_metrics_daily for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));

revoke all on public.connection_metrics, public.connection_metrics_daily from public, anon;
revoke insert, update, delete, truncate, references, trigger on public.connection_metrics,
  public.connection_metrics_daily from authenticated;
grant select on public.connection_metrics, public.connection_metrics_daily to authenticated;
grant all on public.connection_metrics, public.connection_metrics_daily to service_role;

-- The parent's own setting (read by tools that look at it); each partition has its own, above.
alter table public.connection_metrics replica identity full;

alter publication supabase_realtime set (publish_via_partition_root = true);
alter publication supabase_realtime add table public.connection_metrics;
