-- History that lasts (issue 10), part 2: the readers pick the coarsest tier that answers.
--
-- connection_history(p_server_id, p_hours) keeps its shape ({hourly: [{time, successRate,
-- avgResponseTime, attempts}], summary: {totalAttempts, successCount, avgResponseTime}}) and works
-- for windows up to a year (8784 hours), saying which bucket it used beside them:
--   "minute"  p_hours <= 2     per-minute buckets from the raw polls (p_hours × 60 buckets)
--   "hour"    p_hours <= 336   per-hour buckets from the hourly rollup (p_hours buckets)
--   "day"     beyond           per-UTC-day buckets from the daily rollup (ceil(p_hours / 24) buckets)
-- Every bucket of the window is present, the last one the current minute, hour or day; a bucket
-- without polls has attempts 0 and null rates (unknown is not 100 %). `time` is the bucket's start
-- in UTC, ISO with a Z, as before. The list keeps its name `hourly` whatever the bucket.
--
-- fleet_overview() keeps its columns and adds uptime_24h, uptime_7d, uptime_30d, uptime_90d (percent
-- of polls answered, one decimal, null without polls in the window) and history_simulated_until
-- (set by the embedded demo when it backfilled simulated history up to that time; null for real
-- servers). A window of N days reads the daily rollup for its whole UTC days and the hourly rollup
-- for the rest (the part of its first day inside the window, and today).

alter table public.proxmox_servers add column history_simulated_until timestamptz;
comment on column public.proxmox_servers.history_simulated_until is
  'The embedded demo backfilled simulated polls, rollups and incidents up to this time (null: none).';

create or replace function public.connection_history(p_server_id uuid, p_hours integer default 24) returns jsonb
language plpgsql stable security invoker set search_path = public, pg_temp as $$
declare
  result jsonb;
  bucket text;
  step interval;
  last_start timestamptz;
  n integer;
  fmt text;
begin
  if p_hours is null or p_hours < 1 or p_hours > 8784 then
    raise exception 'p_hours must be between 1 and 8784 (one year), not %', p_hours using errcode = '22023';
  end if;
  if not exists (select 1 from public.proxmox_servers where id = p_server_id) then
    raise exception 'server % not found', p_server_id using errcode = 'P0002';
  end if;
  if p_hours <= 2 then
    bucket := 'minute'; step := interval '1 minute'; n := p_hours * 60;
    last_start := date_trunc('minute', now(), 'UTC'); fmt := 'YYYY-MM-DD"T"HH24:MI:00"Z"';
  elsif p_hours <= 336 then
    bucket := 'hour'; step := interval '1 hour'; n := p_hours;
    last_start := date_trunc('hour', now(), 'UTC'); fmt := 'YYYY-MM-DD"T"HH24:00:00"Z"';
  else
    bucket := 'day'; step := interval '24 hours';  -- not '1 day': the session's time zone may have DST
    n := (p_hours + 23) / 24;
    last_start := date_trunc('day', now(), 'UTC'); fmt := 'YYYY-MM-DD"T"00:00:00"Z"';
  end if;
  with buckets as (
    select generate_series(last_start - step * (n - 1), last_start, step) as t
  ), tier as (
    select date_trunc('minute', m.scheduled_at, 'UTC') as t, count(*) as attempts,
           count(*) filter (where m.success) as successes,
           coalesce(sum(m.response_time_ms) filter (where m.success), 0) as response_sum_ms,
           count(m.response_time_ms) filter (where m.success) as response_count
    from public.connection_metrics m
    where bucket = 'minute' and m.server_id = p_server_id and m.scheduled_at >= last_start - step * (n - 1)
    group by 1
    union all
    select h.hour, h.attempts, h.successes, h.response_sum_ms, h.response_count
    from public.connection_metrics_hourly h
    where bucket = 'hour' and h.server_id = p_server_id and h.hour >= last_start - step * (n - 1)
    union all
    select (d.day::timestamp at time zone 'UTC'), d.attempts, d.successes, d.response_sum_ms, d.response_count
    from public.connection_metrics_daily d
    where bucket = 'day' and d.server_id = p_server_id
      and d.day >= ((last_start - step * (n - 1)) at time zone 'UTC')::date
  ), rows as (
    select b.t, coalesce(r.attempts, 0) as attempts, coalesce(r.successes, 0) as successes,
           coalesce(r.response_sum_ms, 0) as response_sum_ms, coalesce(r.response_count, 0) as response_count
    from buckets b left join tier r on r.t = b.t
  )
  select jsonb_build_object(
    'bucket', bucket,
    'hourly', coalesce(jsonb_agg(jsonb_build_object(
        'time', to_char(t at time zone 'UTC', fmt),
        'successRate', case when attempts > 0 then round(100.0 * successes / attempts, 1) end,
        'avgResponseTime', case when response_count > 0 then round(response_sum_ms::numeric / response_count) end,
        'attempts', attempts) order by t), '[]'::jsonb),
    'summary', jsonb_build_object(
        'totalAttempts', coalesce(sum(attempts), 0),
        'successCount', coalesce(sum(successes), 0),
        'avgResponseTime', case when sum(response_count) > 0
                                then round(sum(response_sum_ms)::numeric / sum(response_count)) end))
  into result
  from rows;
  return result;
end
$$;

-- fleet_overview reads the rollups of every server at once, by time (one range scan per window
-- over the indexes below, then hash joins), not server by server: about 150 rollup rows per server
-- whatever the window. Measured for 1,000 servers with a year of data (tests/bench/bench_history_tiers.py,
-- on a shared, loaded 2-core machine): p50 ~350 ms, over the 50 ms goal; ~40 % of it is the 89
-- whole days per server of the 90-day window. The next step is a per-server summary of the whole
-- days, refreshed by a scheduled job.
create index connection_metrics_hourly_hour_idx on public.connection_metrics_hourly (hour);
create index connection_metrics_daily_day_idx on public.connection_metrics_daily (day);

drop function public.fleet_overview();

create function public.fleet_overview()
returns table (
  id uuid, tenant_id uuid, tenant_name text, name text, base_url text, fallback_url text, tls_mode text,
  connection_status public.connection_status, last_health_check_at timestamptz,
  last_connected_at timestamptz, health_check_error text, health_check_error_kind text,
  avg_response_time_ms integer, success_rate numeric, learned_timeout_ms integer, pve_version text,
  nodes_online integer, nodes_total integer, used_fallback boolean, poll_interval_s integer,
  enabled boolean, attempts_24h bigint, successes_24h bigint, avg_response_24h_ms integer,
  last_poll_at timestamptz, uptime_24h numeric, uptime_7d numeric, uptime_30d numeric, uptime_90d numeric,
  history_simulated_until timestamptz)
language sql stable security invoker set search_path = public, pg_temp as $$
  -- Every bound is written out from now() (not read from a CTE) so the planner sees its value and
  -- takes the range scans on hour and day; N days: from now() - N days, the rest of that (partial)
  -- UTC day hour by hour, the whole days after it from the daily rollup, today hour by hour.
  with h as (
    -- The last 24 hours (which hold today's hours).
    select r.server_id, sum(r.attempts) as a24, sum(r.successes) as s24,
           (sum(r.response_sum_ms) / nullif(sum(r.response_count), 0))::integer as avg_ms,
           sum(r.attempts) filter (where r.hour >= date_trunc('day', now(), 'UTC')) as at,
           sum(r.successes) filter (where r.hour >= date_trunc('day', now(), 'UTC')) as st
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
           sum(r.attempts) filter (where r.day > (date_trunc('day', now() - interval '7 days', 'UTC') at time zone 'UTC')::date) as a7,
           sum(r.successes) filter (where r.day > (date_trunc('day', now() - interval '7 days', 'UTC') at time zone 'UTC')::date) as s7,
           sum(r.attempts) filter (where r.day > (date_trunc('day', now() - interval '30 days', 'UTC') at time zone 'UTC')::date) as a30,
           sum(r.successes) filter (where r.day > (date_trunc('day', now() - interval '30 days', 'UTC') at time zone 'UTC')::date) as s30,
           sum(r.attempts) as a90, sum(r.successes) as s90
    from public.connection_metrics_daily r
    where r.day > (date_trunc('day', now() - interval '90 days', 'UTC') at time zone 'UTC')::date and r.day < (now() at time zone 'UTC')::date
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
  order by t.name, s.name
$$;

revoke execute on function public.fleet_overview() from public, anon;
grant execute on function public.fleet_overview() to authenticated, service_role;
