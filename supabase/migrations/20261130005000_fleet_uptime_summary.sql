-- fleet_overview() at fleet scale (issues 10 and 12): p50 ≤ 50 ms for 1,000 servers with a year of
-- history, same columns, same results.
--
-- What it cost (EXPLAIN (ANALYZE, BUFFERS) as a member, tests/bench/bench_history_tiers.py): every
-- call summed ~150 rollup rows per server (24 hours, the first partial day of the 7-, 30- and 90-day
-- windows hour by hour, 89 whole days), each through the row-level security filter of its table.
-- The windows only move once an hour, so those sums are now kept per server:
--
-- fleet_uptime: per server, the sums of fleet_overview()'s windows as they stand at the start of the
-- hour after `through_hour`, without that hour: the 23 hours up to through_hour, and for 7, 30 and
-- 90 days their first partial day (hourly), their whole days (daily) and today's past hours. A
-- reader in the hour after through_hour adds the current hour's rollup row: one row per server.
--
-- Kept exact:
--   * refresh_fleet_uptime(fleet_uptime_barrier()) (the worker's job `refresh_fleet_uptime`, every
--     15 s, a no-op while every server is current) recomputes every row for the last complete hour.
--     The barrier waits for the rollup writers in flight (a SHARE lock on both rollups, released at
--     once); refresh takes an exclusive advisory lock, so late writers (below) wait for it.
--   * a rollup row of the past (a late or retried poll, the demo's backfill, a purge) changed later
--     corrects the summary rows whose windows hold it, under the shared advisory lock, in the
--     writer's transaction (fleet_uptime_correct). Rows of the current hour (hourly) or today
--     (daily) are in no summary: the triggers skip them, so polls as they come cost nothing here.
--   * fleet_overview() uses the summary only when every server the caller sees has it for the
--     previous hour; otherwise (the job has not run yet this hour, a server just added) it computes
--     every window from the rollups as before.
-- Windows are counted in hours (N × 24 h), as connection_history does, whatever the session's time
-- zone (the same results in UTC, which the API uses).
--
-- Measured (tests/bench/bench_history_tiers.py, reading part, 1,000 servers with a year of rollups,
-- on the shared 2-core machine, before and after in one session): as a member p50 239 ms → 37 ms
-- (service_role 141 → 33 ms); without a current summary (the rollups' path, its day bounds now
-- computed once rather than per row) 69 ms; the hourly refresh of 1,000 servers 157 ms.

create table public.fleet_uptime (
  server_id uuid primary key references public.proxmox_servers (id) on delete cascade,
  tenant_id uuid not null,
  through_hour timestamptz not null,
  attempts_24h bigint not null, successes_24h bigint not null,
  response_sum_24h numeric not null, response_count_24h bigint not null,
  attempts_7d bigint not null, successes_7d bigint not null,
  attempts_30d bigint not null, successes_30d bigint not null,
  attempts_90d bigint not null, successes_90d bigint not null
);
comment on table public.fleet_uptime is
  'Per server, fleet_overview()''s window sums up to through_hour (kept by refresh_fleet_uptime and the rollup triggers).';

alter table public.fleet_uptime enable row level security;
create policy fleet_uptime_read on public.fleet_uptime for select to authenticated
  using (tenant_id in (select public.my_tenant_ids()));
revoke all on public.fleet_uptime from public, anon, authenticated;
grant select on public.fleet_uptime to authenticated;
grant all on public.fleet_uptime to service_role;

-- The advisory lock that orders refreshes and corrections (any constant; this one reads "uptime").
create function public.fleet_uptime_lock_key() returns bigint
language sql immutable as $$ select 7570746960000001::bigint $$;

-- The windows of a summary row with through_hour z (c = z + 1 h: the hour its readers are in).
--   24 h: hours [c - 23 h, z]
--   N days: hours [c - N×24 h + 1 h, the end of that UTC day), days after it up to today (daily),
--           today's hours up to z.
create function public.fleet_uptime_hour_in(p_z timestamptz, p_days integer, p_hour timestamptz)
returns boolean language sql immutable as $$
  select case when p_days = 1 then p_hour >= p_z - interval '22 hours' and p_hour <= p_z
         else (p_hour >= p_z + interval '2 hours' - make_interval(hours => 24 * p_days)
               and p_hour < date_trunc('day', p_z + interval '1 hour' - make_interval(hours => 24 * p_days), 'UTC')
                            + interval '24 hours')
           or (p_hour >= date_trunc('day', p_z + interval '1 hour', 'UTC') and p_hour <= p_z) end
$$;

create function public.fleet_uptime_day_in(p_z timestamptz, p_days integer, p_day date)
returns boolean language sql immutable as $$
  select p_day > ((p_z + interval '1 hour' - make_interval(hours => 24 * p_days)) at time zone 'UTC')::date
     and p_day < ((p_z + interval '1 hour') at time zone 'UTC')::date
$$;

-- Waits for the rollup writers in flight and returns the time before it did: the refresh that
-- follows (another transaction) may sum every hour before that time's hour. Null when every server
-- already has its summary for the last complete hour (nothing to do, no lock taken), or when the
-- writers did not finish within a second.
create function public.fleet_uptime_barrier() returns timestamptz
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  t timestamptz := clock_timestamp();
begin
  if not exists (select 1 from public.proxmox_servers s
                 left join public.fleet_uptime u
                   on u.server_id = s.id and u.through_hour = date_trunc('hour', t, 'UTC') - interval '1 hour'
                 where u.server_id is null) then
    return null;
  end if;
  -- Writers queue behind this lock while it waits: give up after a second (a long transaction
  -- writing rollups, a backfill), and try again at the job's next run.
  perform set_config('lock_timeout', '1000', true);
  begin
    lock table public.connection_metrics_hourly, public.connection_metrics_daily in share mode;
  exception when lock_not_available then
    return null;
  end;
  return t;
end
$$;

-- Recomputes the summary of every server for the hour before p_barrier's hour (p_barrier: what
-- fleet_uptime_barrier() returned, in an earlier transaction); returns the rows written.
create function public.refresh_fleet_uptime(p_barrier timestamptz) returns integer
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  z timestamptz;
  c timestamptz;
  n integer;
begin
  if p_barrier is null then
    return 0;
  end if;
  if p_barrier > clock_timestamp() then
    raise exception 'the barrier % is in the future: pass what fleet_uptime_barrier() returned', p_barrier
      using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(public.fleet_uptime_lock_key());
  c := date_trunc('hour', p_barrier, 'UTC');
  z := c - interval '1 hour';
  with h as (
    select r.server_id, sum(r.attempts) as a, sum(r.successes) as s,
           sum(r.response_sum_ms) as rs, sum(r.response_count) as rc
    from public.connection_metrics_hourly r
    where r.hour >= c - interval '23 hours' and r.hour <= z
    group by r.server_id
  ), e as (
    -- Hourly parts: each window's first partial day, and today's past hours (once per window).
    select x.server_id,
           sum(x.attempts) filter (where x.w = 7) as a7, sum(x.successes) filter (where x.w = 7) as s7,
           sum(x.attempts) filter (where x.w = 30) as a30, sum(x.successes) filter (where x.w = 30) as s30,
           sum(x.attempts) filter (where x.w = 90) as a90, sum(x.successes) filter (where x.w = 90) as s90
    from (
      select w.w, r.server_id, r.attempts, r.successes
      from (values (7), (30), (90)) w (w)
      join public.connection_metrics_hourly r
        on r.hour >= c + interval '1 hour' - make_interval(hours => 24 * w.w)
       and r.hour < date_trunc('day', c - make_interval(hours => 24 * w.w), 'UTC') + interval '24 hours'
      union all
      select w.w, r.server_id, r.attempts, r.successes
      from (values (7), (30), (90)) w (w)
      join public.connection_metrics_hourly r on r.hour >= date_trunc('day', c, 'UTC') and r.hour <= z
    ) x
    group by x.server_id
  ), d as (
    select r.server_id,
           sum(r.attempts) filter (where r.day > ((c - interval '168 hours') at time zone 'UTC')::date) as a7,
           sum(r.successes) filter (where r.day > ((c - interval '168 hours') at time zone 'UTC')::date) as s7,
           sum(r.attempts) filter (where r.day > ((c - interval '720 hours') at time zone 'UTC')::date) as a30,
           sum(r.successes) filter (where r.day > ((c - interval '720 hours') at time zone 'UTC')::date) as s30,
           sum(r.attempts) as a90, sum(r.successes) as s90
    from public.connection_metrics_daily r
    where r.day > ((c - interval '2160 hours') at time zone 'UTC')::date and r.day < (c at time zone 'UTC')::date
    group by r.server_id
  )
  insert into public.fleet_uptime as u
    (server_id, tenant_id, through_hour, attempts_24h, successes_24h, response_sum_24h, response_count_24h,
     attempts_7d, successes_7d, attempts_30d, successes_30d, attempts_90d, successes_90d)
  select s.id, s.tenant_id, z, coalesce(h.a, 0), coalesce(h.s, 0), coalesce(h.rs, 0), coalesce(h.rc, 0),
         coalesce(e.a7, 0) + coalesce(d.a7, 0), coalesce(e.s7, 0) + coalesce(d.s7, 0),
         coalesce(e.a30, 0) + coalesce(d.a30, 0), coalesce(e.s30, 0) + coalesce(d.s30, 0),
         coalesce(e.a90, 0) + coalesce(d.a90, 0), coalesce(e.s90, 0) + coalesce(d.s90, 0)
  from public.proxmox_servers s
  left join h on h.server_id = s.id
  left join e on e.server_id = s.id
  left join d on d.server_id = s.id
  on conflict (server_id) do update set
    tenant_id = excluded.tenant_id, through_hour = excluded.through_hour,
    attempts_24h = excluded.attempts_24h, successes_24h = excluded.successes_24h,
    response_sum_24h = excluded.response_sum_24h, response_count_24h = excluded.response_count_24h,
    attempts_7d = excluded.attempts_7d, successes_7d = excluded.successes_7d,
    attempts_30d = excluded.attempts_30d, successes_30d = excluded.successes_30d,
    attempts_90d = excluded.attempts_90d, successes_90d = excluded.successes_90d;
  get diagnostics n = row_count;
  return n;
end
$$;

revoke execute on function public.fleet_uptime_barrier(), public.refresh_fleet_uptime(timestamptz)
  from public, anon, authenticated;
grant execute on function public.fleet_uptime_barrier(), public.refresh_fleet_uptime(timestamptz) to service_role;
revoke execute on function public.fleet_uptime_lock_key(), public.fleet_uptime_hour_in(timestamptz, integer, timestamptz),
  public.fleet_uptime_day_in(timestamptz, integer, date) from public, anon, authenticated;

-- A past rollup row changed (inserted, updated, deleted): add the difference to the summary rows
-- whose windows hold it. Only rows before the current hour (hourly) or today (daily) come here
-- (the triggers' WHEN, on the clock: a summary never holds a later one).
create function public.fleet_uptime_correct() returns trigger
language plpgsql security definer set search_path = public, pg_temp as $$
declare
  sid uuid;
  da bigint;
  ds bigint;
  drs numeric := 0;
  drc bigint := 0;
begin
  sid := case when tg_op = 'DELETE' then old.server_id else new.server_id end;
  da := case when tg_op = 'DELETE' then 0 else new.attempts end - case when tg_op = 'INSERT' then 0 else old.attempts end;
  ds := case when tg_op = 'DELETE' then 0 else new.successes end - case when tg_op = 'INSERT' then 0 else old.successes end;
  perform pg_advisory_xact_lock_shared(public.fleet_uptime_lock_key());
  if tg_table_name = 'connection_metrics_hourly' then
    declare
      h timestamptz := case when tg_op = 'DELETE' then old.hour else new.hour end;
    begin
      drs := case when tg_op = 'DELETE' then 0 else new.response_sum_ms end
             - case when tg_op = 'INSERT' then 0 else old.response_sum_ms end;
      drc := case when tg_op = 'DELETE' then 0 else new.response_count end
             - case when tg_op = 'INSERT' then 0 else old.response_count end;
      update public.fleet_uptime u set
        attempts_24h = u.attempts_24h + case when public.fleet_uptime_hour_in(u.through_hour, 1, h) then da else 0 end,
        successes_24h = u.successes_24h + case when public.fleet_uptime_hour_in(u.through_hour, 1, h) then ds else 0 end,
        response_sum_24h = u.response_sum_24h + case when public.fleet_uptime_hour_in(u.through_hour, 1, h) then drs else 0 end,
        response_count_24h = u.response_count_24h + case when public.fleet_uptime_hour_in(u.through_hour, 1, h) then drc else 0 end,
        attempts_7d = u.attempts_7d + case when public.fleet_uptime_hour_in(u.through_hour, 7, h) then da else 0 end,
        successes_7d = u.successes_7d + case when public.fleet_uptime_hour_in(u.through_hour, 7, h) then ds else 0 end,
        attempts_30d = u.attempts_30d + case when public.fleet_uptime_hour_in(u.through_hour, 30, h) then da else 0 end,
        successes_30d = u.successes_30d + case when public.fleet_uptime_hour_in(u.through_hour, 30, h) then ds else 0 end,
        attempts_90d = u.attempts_90d + case when public.fleet_uptime_hour_in(u.through_hour, 90, h) then da else 0 end,
        successes_90d = u.successes_90d + case when public.fleet_uptime_hour_in(u.through_hour, 90, h) then ds else 0 end
      where u.server_id = sid and h <= u.through_hour and h > u.through_hour - interval '2160 hours';
    end;
  else
    declare
      d date := case when tg_op = 'DELETE' then old.day else new.day end;
    begin
      update public.fleet_uptime u set
        attempts_7d = u.attempts_7d + case when public.fleet_uptime_day_in(u.through_hour, 7, d) then da else 0 end,
        successes_7d = u.successes_7d + case when public.fleet_uptime_day_in(u.through_hour, 7, d) then ds else 0 end,
        attempts_30d = u.attempts_30d + case when public.fleet_uptime_day_in(u.through_hour, 30, d) then da else 0 end,
        successes_30d = u.successes_30d + case when public.fleet_uptime_day_in(u.through_hour, 30, d) then ds else 0 end,
        attempts_90d = u.attempts_90d + case when public.fleet_uptime_day_in(u.through_hour, 90, d) then da else 0 end,
        successes_90d = u.successes_90d + case when public.fleet_uptime_day_in(u.through_hour, 90, d) then ds else 0 end
      where u.server_id = sid and public.fleet_uptime_day_in(u.through_hour, 90, d);
    end;
  end if;
  return null;
end
$$;
revoke execute on function public.fleet_uptime_correct() from public, anon, authenticated;

create trigger fleet_uptime_hourly_ins after insert on public.connection_metrics_hourly for each row
  when (new.hour < date_trunc('hour', clock_timestamp(), 'UTC') and new.hour > clock_timestamp() - interval '2208 hours')
  execute function public.fleet_uptime_correct();
create trigger fleet_uptime_hourly_upd after update on public.connection_metrics_hourly for each row
  when (new.hour < date_trunc('hour', clock_timestamp(), 'UTC') and new.hour > clock_timestamp() - interval '2208 hours')
  execute function public.fleet_uptime_correct();
create trigger fleet_uptime_hourly_del after delete on public.connection_metrics_hourly for each row
  when (old.hour < date_trunc('hour', clock_timestamp(), 'UTC') and old.hour > clock_timestamp() - interval '2208 hours')
  execute function public.fleet_uptime_correct();
create trigger fleet_uptime_daily_ins after insert on public.connection_metrics_daily for each row
  when (new.day < (clock_timestamp() at time zone 'UTC')::date and new.day > (clock_timestamp() at time zone 'UTC')::date - 92)
  execute function public.fleet_uptime_correct();
create trigger fleet_uptime_daily_upd after update on public.connection_metrics_daily for each row
  when (new.day < (clock_timestamp() at time zone 'UTC')::date and new.day > (clock_timestamp() at time zone 'UTC')::date - 92)
  execute function public.fleet_uptime_correct();
create trigger fleet_uptime_daily_del after delete on public.connection_metrics_daily for each row
  when (old.day < (clock_timestamp() at time zone 'UTC')::date and old.day > (clock_timestamp() at time zone 'UTC')::date - 92)
  execute function public.fleet_uptime_correct();

-- fleet_overview(): the same columns and results; from the summary when every server the caller
-- sees has it for the last complete hour (the summary row plus the current hour's rollup row per
-- server), otherwise from the rollups as in 20261130001100_history_reads.sql.
create or replace function public.fleet_overview()
returns table (
  id uuid, tenant_id uuid, tenant_name text, name text, base_url text, fallback_url text, tls_mode text,
  connection_status public.connection_status, last_health_check_at timestamptz,
  last_connected_at timestamptz, health_check_error text, health_check_error_kind text,
  avg_response_time_ms integer, success_rate numeric, learned_timeout_ms integer, pve_version text,
  nodes_online integer, nodes_total integer, used_fallback boolean, poll_interval_s integer,
  enabled boolean, attempts_24h bigint, successes_24h bigint, avg_response_24h_ms integer,
  last_poll_at timestamptz, uptime_24h numeric, uptime_7d numeric, uptime_30d numeric, uptime_90d numeric,
  history_simulated_until timestamptz)
language plpgsql stable security invoker set search_path = public, pg_temp as $$
#variable_conflict use_column
declare
  z timestamptz := date_trunc('hour', now(), 'UTC') - interval '1 hour';
  -- The bounds of the rollups' path, once (per row they cost more than the sums).
  today_start timestamptz := date_trunc('day', now(), 'UTC');
  today date := (now() at time zone 'UTC')::date;
  d7 date := (date_trunc('day', now() - interval '7 days', 'UTC') at time zone 'UTC')::date;
  d30 date := (date_trunc('day', now() - interval '30 days', 'UTC') at time zone 'UTC')::date;
  d90 date := (date_trunc('day', now() - interval '90 days', 'UTC') at time zone 'UTC')::date;
begin
  if exists (select 1 from public.proxmox_servers s
             left join public.fleet_uptime u on u.server_id = s.id and u.through_hour = z
             where u.server_id is null) then
    return query
      with h as (
        -- The last 24 hours (which hold today's hours).
        select r.server_id, sum(r.attempts) as a24, sum(r.successes) as s24,
               (sum(r.response_sum_ms) / nullif(sum(r.response_count), 0))::integer as avg_ms,
               sum(r.attempts) filter (where r.hour >= today_start) as at,
               sum(r.successes) filter (where r.hour >= today_start) as st
        from public.connection_metrics_hourly r
        where r.hour > now() - interval '24 hours'
        group by r.server_id
      ), e as (
        -- The first, partial day of each longer window, hour by hour.
        select x.server_id,
               sum(x.attempts) filter (where x.w = 7) as a7, sum(x.successes) filter (where x.w = 7) as s7,
               sum(x.attempts) filter (where x.w = 30) as a30, sum(x.successes) filter (where x.w = 30) as s30,
               sum(x.attempts) filter (where x.w = 90) as a90, sum(x.successes) filter (where x.w = 90) as s90
        from (
          select 7 as w, r.server_id, r.attempts, r.successes from public.connection_metrics_hourly r
          where r.hour > now() - interval '7 days' and r.hour < date_trunc('day', now() - interval '7 days', 'UTC') + interval '24 hours'
          union all
          select 30, r.server_id, r.attempts, r.successes from public.connection_metrics_hourly r
          where r.hour > now() - interval '30 days' and r.hour < date_trunc('day', now() - interval '30 days', 'UTC') + interval '24 hours'
          union all
          select 90, r.server_id, r.attempts, r.successes from public.connection_metrics_hourly r
          where r.hour > now() - interval '90 days' and r.hour < date_trunc('day', now() - interval '90 days', 'UTC') + interval '24 hours'
        ) x
        group by x.server_id
      ), d as (
        -- The whole days between, from the daily rollup.
        select r.server_id,
               sum(r.attempts) filter (where r.day > d7) as a7,
               sum(r.successes) filter (where r.day > d7) as s7,
               sum(r.attempts) filter (where r.day > d30) as a30,
               sum(r.successes) filter (where r.day > d30) as s30,
               sum(r.attempts) as a90, sum(r.successes) as s90
        from public.connection_metrics_daily r
        where r.day > d90 and r.day < today
        group by r.server_id
      )
      select s.id, s.tenant_id, t.name, s.name, s.base_url, s.fallback_url, s.tls_mode, s.connection_status,
             s.last_health_check_at, s.last_connected_at, s.health_check_error, s.health_check_error_kind,
             s.avg_response_time_ms, s.success_rate, s.learned_timeout_ms, s.pve_version, s.nodes_online,
             s.nodes_total, s.used_fallback, s.poll_interval_s, s.enabled,
             coalesce(h.a24, 0), coalesce(h.s24, 0), h.avg_ms, p.created_at,
             round(100.0 * h.s24 / nullif(h.a24, 0), 1),
             round(100.0 * (coalesce(h.st, 0) + coalesce(e.s7, 0) + coalesce(d.s7, 0))
                   / nullif(coalesce(h.at, 0) + coalesce(e.a7, 0) + coalesce(d.a7, 0), 0), 1),
             round(100.0 * (coalesce(h.st, 0) + coalesce(e.s30, 0) + coalesce(d.s30, 0))
                   / nullif(coalesce(h.at, 0) + coalesce(e.a30, 0) + coalesce(d.a30, 0), 0), 1),
             round(100.0 * (coalesce(h.st, 0) + coalesce(e.s90, 0) + coalesce(d.s90, 0))
                   / nullif(coalesce(h.at, 0) + coalesce(e.a90, 0) + coalesce(d.a90, 0), 0), 1),
             s.history_simulated_until
      from public.proxmox_servers s
      join public.tenants t on t.id = s.tenant_id
      left join h on h.server_id = s.id
      left join e on e.server_id = s.id
      left join d on d.server_id = s.id
      -- The newest poll: one probe per server, newest partition first (none is ahead of now).
      left join lateral (
        select m.created_at from public.connection_metrics m
        where m.server_id = s.id and m.scheduled_at <= now() + interval '1 hour'
        order by m.scheduled_at desc limit 1
      ) p on true
      order by t.name, s.name;
    return;
  end if;
  return query
    select s.id, s.tenant_id, t.name, s.name, s.base_url, s.fallback_url, s.tls_mode, s.connection_status,
           s.last_health_check_at, s.last_connected_at, s.health_check_error, s.health_check_error_kind,
           s.avg_response_time_ms, s.success_rate, s.learned_timeout_ms, s.pve_version, s.nodes_online,
           s.nodes_total, s.used_fallback, s.poll_interval_s, s.enabled,
           u.attempts_24h + coalesce(r.attempts, 0), u.successes_24h + coalesce(r.successes, 0),
           ((u.response_sum_24h + coalesce(r.response_sum_ms, 0))
            / nullif(u.response_count_24h + coalesce(r.response_count, 0), 0))::integer,
           p.created_at,
           round(100.0 * (u.successes_24h + coalesce(r.successes, 0)) / nullif(u.attempts_24h + coalesce(r.attempts, 0), 0), 1),
           round(100.0 * (u.successes_7d + coalesce(r.successes, 0)) / nullif(u.attempts_7d + coalesce(r.attempts, 0), 0), 1),
           round(100.0 * (u.successes_30d + coalesce(r.successes, 0)) / nullif(u.attempts_30d + coalesce(r.attempts, 0), 0), 1),
           round(100.0 * (u.successes_90d + coalesce(r.successes, 0)) / nullif(u.attempts_90d + coalesce(r.attempts, 0), 0), 1),
           s.history_simulated_until
    from public.proxmox_servers s
    join public.tenants t on t.id = s.tenant_id
    join public.fleet_uptime u on u.server_id = s.id and u.through_hour = z
    left join public.connection_metrics_hourly r on r.server_id = s.id and r.hour = z + interval '1 hour'
    left join lateral (
      select m.created_at from public.connection_metrics m
      where m.server_id = s.id and m.scheduled_at <= now() + interval '1 hour'
      order by m.scheduled_at desc limit 1
    ) p on true
    order by t.name, s.name;
end
$$;

revoke execute on function public.fleet_overview() from public, anon;
grant execute on function public.fleet_overview() to authenticated, service_role;
