-- The Realtime budget: the server row's "last checked" and 24 h figures are refreshed every few
-- minutes (PROXWATCH_STATUS_REFRESH, default 300 s) instead of every minute, so a fleet-view
-- subscriber receives ~3.6 % as many messages as there are polls instead of ~17 % (measured in
-- tests/bench/bench_realtime_budget.py). fleet_overview() gives the exact time of the latest
-- poll (last_poll_at) from the metrics table, so a page that reads it never shows a stale check.

drop function public.fleet_overview();

create function public.fleet_overview()
returns table (
  id uuid, tenant_id uuid, tenant_name text, name text, base_url text, fallback_url text, tls_mode text,
  connection_status public.connection_status, last_health_check_at timestamptz,
  last_connected_at timestamptz, health_check_error text, health_check_error_kind text,
  avg_response_time_ms integer, success_rate numeric, learned_timeout_ms integer, pve_version text,
  nodes_online integer, nodes_total integer, used_fallback boolean, poll_interval_s integer,
  enabled boolean, attempts_24h bigint, successes_24h bigint, avg_response_24h_ms integer,
  last_poll_at timestamptz)
language sql stable security invoker set search_path = public, pg_temp as $$
  select s.id, s.tenant_id, t.name, s.name, s.base_url, s.fallback_url, s.tls_mode, s.connection_status,
         s.last_health_check_at, s.last_connected_at, s.health_check_error, s.health_check_error_kind,
         s.avg_response_time_ms, s.success_rate, s.learned_timeout_ms, s.pve_version, s.nodes_online,
         s.nodes_total, s.used_fallback, s.poll_interval_s, s.enabled,
         coalesce(d.attempts, 0), coalesce(d.successes, 0), d.avg_ms, p.created_at
  from public.proxmox_servers s
  join public.tenants t on t.id = s.tenant_id
  left join lateral (
    select sum(h.attempts) as attempts, sum(h.successes) as successes,
           (sum(h.response_sum_ms) / nullif(sum(h.response_count), 0))::integer as avg_ms
    from public.connection_metrics_hourly h
    where h.server_id = s.id and h.hour > now() - interval '24 hours'
  ) d on true
  left join lateral (
    select m.created_at from public.connection_metrics m
    where m.server_id = s.id order by m.scheduled_at desc limit 1
  ) p on true
  order by t.name, s.name
$$;

revoke execute on function public.fleet_overview() from public, anon;
grant execute on function public.fleet_overview() to authenticated, service_role;
