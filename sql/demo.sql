-- The embedded demo's simulated history (worker/embedded/demo.py backfill_history): 30 days of
-- polls for the simulated fleet, generated in the database (generate_series: nothing crosses the
-- wire), marked as simulated on each server (proxmox_servers.history_simulated_until).
--
-- %(profiles)s: [{server_id, ok (share of polls answered), ms (typical latency), kind, message
-- (a failed poll's error)}]; %(outages)s: [{server_id, from, to (null: still down), kind, message}].
-- %(since)s: the first simulated hour; %(raw_from)s: the hour raw polls start (every 5 s, the demo's
-- interval); %(until)s: the end of the simulation. Noise comes from a hash of the server and the
-- time, so a server's character is the same at each start.

-- name: demo_claim_backfill
-- The demo servers without simulated history yet, locked: two starts cannot both backfill one.
select id from public.proxmox_servers
where id = any(%(ids)s::uuid[]) and history_simulated_until is null
order by id
for update;

-- name: demo_backfill_hourly
-- Older hours straight into the hourly rollup, then their days into the daily rollup.
with p as (
  select * from jsonb_to_recordset(%(profiles)s::jsonb) as p(server_id uuid, ok float8, ms integer, kind text,
                                                             message text)
), o as (
  select * from jsonb_to_recordset(%(outages)s::jsonb) as o(server_id uuid, "from" timestamptz, "to" timestamptz)
), h as (
  select p.server_id, s.tenant_id, g.hour, p.ms,
         exists (select 1 from o where o.server_id = p.server_id and g.hour >= o."from"
                 and (o."to" is null or g.hour < o."to")) as down,
         case when p.ok >= 1 then 1.0   -- a healthy server answers every poll; a flaky one varies by hour
              else least(1.0, p.ok * (0.8 + 0.4 * ((hashtext(p.server_id::text || g.hour::text) & 65535) / 65535.0)))
         end as ok,
         0.85 + 0.3 * ((hashtext(g.hour::text || p.server_id::text) & 65535) / 65535.0) as slow
  from p join public.proxmox_servers s on s.id = p.server_id
  cross join generate_series(%(since)s::timestamptz, %(raw_from)s::timestamptz - interval '1 hour',
                             interval '1 hour') as g(hour)
), ins as (
  insert into public.connection_metrics_hourly (server_id, tenant_id, hour, attempts, successes, response_sum_ms,
                                                response_count)
  select server_id, tenant_id, hour, 720, n, (n * ms * slow)::bigint, n
  from (select *, case when down then 0 else round(720 * ok)::integer end as n from h) x
  returning server_id, tenant_id, hour, attempts, successes, response_sum_ms, response_count
)
insert into public.connection_metrics_daily as d (server_id, tenant_id, day, attempts, successes, response_sum_ms,
                                                  response_count)
select server_id, min(tenant_id::text)::uuid, (hour at time zone 'UTC')::date, sum(attempts), sum(successes),
       sum(response_sum_ms), sum(response_count)
from ins group by server_id, (hour at time zone 'UTC')::date
on conflict (server_id, day) do update set
  attempts = d.attempts + excluded.attempts, successes = d.successes + excluded.successes,
  response_sum_ms = d.response_sum_ms + excluded.response_sum_ms,
  response_count = d.response_count + excluded.response_count;

-- name: demo_backfill_raw
-- The recent hours as raw polls every 5 s (the rollup trigger adds them to their hours and days).
with p as (
  select * from jsonb_to_recordset(%(profiles)s::jsonb) as p(server_id uuid, ok float8, ms integer, kind text,
                                                             message text)
), o as (
  select * from jsonb_to_recordset(%(outages)s::jsonb) as o(server_id uuid, "from" timestamptz, "to" timestamptz,
                                                            kind text, message text)
), r as (
  select p.server_id, s.tenant_id, g.at, p.ms, p.kind, p.message,
         (select o.kind from o where o.server_id = p.server_id and g.at >= o."from"
          and (o."to" is null or g.at < o."to") limit 1) as down_kind,
         (select o.message from o where o.server_id = p.server_id and g.at >= o."from"
          and (o."to" is null or g.at < o."to") limit 1) as down_message,
         (hashtext(p.server_id::text || g.at::text) & 65535) / 65535.0 as roll,
         0.7 + 0.6 * ((hashtext(g.at::text || p.server_id::text) & 65535) / 65535.0) as slow,
         p.ok
  from p join public.proxmox_servers s on s.id = p.server_id
  cross join generate_series(%(raw_from)s::timestamptz, %(until)s::timestamptz - interval '5 seconds',
                             interval '5 seconds') as g(at)
)
insert into public.connection_metrics (server_id, tenant_id, scheduled_at, created_at, success, response_time_ms,
                                       error_kind, error_message)
select server_id, tenant_id, at, at, ok_now, case when ok_now then (ms * slow)::integer end,
       case when not ok_now then coalesce(down_kind, kind) end,
       case when not ok_now then coalesce(down_message, message) end
from (select *, down_kind is null and roll < ok as ok_now from r) x
order by server_id, at
on conflict (server_id, scheduled_at) do nothing;

-- name: demo_backfill_incidents
-- The outages as incidents (a still-open one stays open: the live polls continue it).
insert into public.incidents (tenant_id, server_id, status, started_at, ended_at, error_kind, error_message,
                              last_error_message)
select s.tenant_id, o.server_id, 'offline', o."from", o."to", o.kind, o.message, o.message
from jsonb_to_recordset(%(outages)s::jsonb) as o(server_id uuid, "from" timestamptz, "to" timestamptz, kind text,
                                                 message text)
join public.proxmox_servers s on s.id = o.server_id
on conflict do nothing;

-- name: demo_mark_simulated
update public.proxmox_servers set history_simulated_until = %(until)s where id = any(%(ids)s::uuid[]);
