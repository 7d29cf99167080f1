-- Named queries run by the Python code (worker/db.py loads them by name).

-- name: insert_tenant
-- Create a tenant; returns its id.
insert into public.tenants (name) values (%(name)s) returning id, name;

-- name: tenant_by_name
select id, name from public.tenants where name = %(name)s;

-- name: tenants_list
select t.id, t.name, count(s.id) as servers
from public.tenants t left join public.proxmox_servers s on s.tenant_id = t.id
group by t.id order by t.name;

-- name: user_by_email
select id, email from auth.users where lower(email) = lower(%(email)s);

-- name: insert_user
-- A confirmed e-mail/password user, as Supabase Auth stores one (bcrypt hash in encrypted_password).
insert into auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                        raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
values ('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
        lower(%(email)s), %(password_hash)s, now(), '{"provider": "email", "providers": ["email"]}', '{}',
        now(), now())
returning id, email;

-- name: update_user_password
update auth.users set encrypted_password = %(password_hash)s, updated_at = now() where id = %(user_id)s;

-- name: upsert_member
insert into public.tenant_members (tenant_id, user_id, role) values (%(tenant_id)s, %(user_id)s, %(role)s)
on conflict (tenant_id, user_id) do update set role = excluded.role;

-- name: insert_server
insert into public.proxmox_servers (tenant_id, name, base_url, fallback_url, tls_mode, tls_fingerprint,
                                    auth_kind, poll_interval_s)
values (%(tenant_id)s, %(name)s, %(base_url)s, %(fallback_url)s, %(tls_mode)s, %(tls_fingerprint)s,
        %(auth_kind)s, %(poll_interval_s)s)
returning id, name;

-- name: insert_credentials
insert into public.server_credentials (server_id, username, token_id, secret_ciphertext)
values (%(server_id)s, %(username)s, %(token_id)s, %(secret_ciphertext)s);

-- name: servers_list
select s.id, t.name as tenant, s.name, s.base_url, s.fallback_url, s.tls_mode, s.auth_kind, s.poll_interval_s,
       s.enabled, s.connection_status, s.last_health_check_at, s.avg_response_time_ms, s.success_rate,
       s.pve_version, s.nodes_online, s.nodes_total, s.health_check_error,
       (select m.created_at from public.connection_metrics m where m.server_id = s.id
         order by m.scheduled_at desc limit 1) as last_poll_at
from public.proxmox_servers s join public.tenants t on t.id = s.tenant_id
where (%(tenant)s::text is null or t.name = %(tenant)s)
order by t.name, s.name;

-- name: servers_by_name
select s.id, s.name, t.name as tenant from public.proxmox_servers s join public.tenants t on t.id = s.tenant_id
where s.name = %(name)s and (%(tenant)s::text is null or t.name = %(tenant)s);

-- name: update_server
-- The one write path for a server's settings (see the migration api_write_paths): null keeps a field.
select public.update_server(%(id)s, %(name)s, %(base_url)s, %(fallback_url)s, %(tls_mode)s, %(tls_fingerprint)s,
                            %(poll_interval_s)s, %(enabled)s, %(credentials)s) as result;

-- name: delete_server
delete from public.proxmox_servers where id = %(id)s;

-- name: schedule_list
-- Every enabled server and its interval, for the scheduler.
select id, poll_interval_s from public.proxmox_servers where enabled order by id;

-- name: poll_target
-- Everything one poll needs: the address, TLS settings, credentials and the learned timeout.
-- Credentials are null when update_server() dropped them (the address or TLS settings changed):
-- the poll then fails as a configuration error instead of sending the old secret anywhere.
select s.id, s.tenant_id, s.name, s.base_url, s.fallback_url, s.tls_mode, s.tls_fingerprint,
       s.learned_timeout_ms, c.username, c.token_id, c.secret_ciphertext
from public.proxmox_servers s left join public.server_credentials c on c.server_id = s.id
where s.id = %(server_id)s;

-- name: poll_targets
-- poll_target for the servers of one batched poll message, in one round trip.
select s.id, s.tenant_id, s.name, s.base_url, s.fallback_url, s.tls_mode, s.tls_fingerprint,
       s.learned_timeout_ms, c.username, c.token_id, c.secret_ciphertext
from public.proxmox_servers s left join public.server_credentials c on c.server_id = s.id
where s.id = any(%(ids)s::uuid[]);

-- name: lock_servers
-- The first statement of a write: the status rows of the batch's servers, locked in id order, so two
-- workers writing polls of one server serialize from the start — the status and the incident of a
-- server are touched only under its lock (its rollup rows by the fold, migration rollup_pending),
-- and the status read that follows (a statement of its own, with its own snapshot) sees the other
-- writer's committed polls. NO KEY
-- UPDATE: the foreign key checks of other inserts (KEY SHARE) do not wait for it.
select id from public.proxmox_servers where id = any(%(ids)s::uuid[]) order by id for no key update;

-- name: insert_metrics
-- One metric row per poll result; a retried poll (same server_id, scheduled_at) is ignored.
-- The rollup trigger counts only the rows really inserted. The arrays travel in binary format:
-- a third of the client's CPU per row went into quoting them as text.
insert into public.connection_metrics (server_id, tenant_id, scheduled_at, created_at, success, response_time_ms,
                                       error_kind, error_message, used_fallback)
select r.server_id, s.tenant_id, r.scheduled_at, r.created_at, r.success, r.response_time_ms, r.error_kind,
       r.error_message, r.used_fallback
from unnest(%(server_id)b::uuid[], %(scheduled_at)b::timestamptz[], %(created_at)b::timestamptz[],
            %(success)b::boolean[], %(response_time_ms)b::integer[], %(error_kind)b::text[],
            %(error_message)b::text[], %(used_fallback)b::boolean[])
     as r(server_id, scheduled_at, created_at, success, response_time_ms, error_kind, error_message, used_fallback)
join public.proxmox_servers s on s.id = r.server_id
order by r.server_id, r.scheduled_at
on conflict (server_id, scheduled_at) do nothing
returning server_id, scheduled_at;

-- name: status_inputs
-- The current status row of each server and its last 10 poll outcomes (newest first); the rows are
-- locked by lock_servers, earlier in the transaction.
select s.id, s.connection_status::text as connection_status, s.last_health_check_at, s.last_connected_at,
       s.health_check_error, s.health_check_error_kind, s.pve_version, s.nodes_online, s.nodes_total,
       s.used_fallback, s.avg_response_time_ms, s.success_rate, s.learned_timeout_ms,
       r.flags, r.newest
from public.proxmox_servers s
cross join lateral (
  select array_agg(m.success order by m.scheduled_at desc) as flags, max(m.scheduled_at) as newest
  from (select success, scheduled_at from public.connection_metrics
        where server_id = s.id order by scheduled_at desc limit 10) m
) r
where s.id = any(%(ids)s::uuid[])
order by s.id;

-- name: server_stats
-- 24 h success rate and latency from the rollup plus the deltas not folded into it yet (the writer's
-- own, in this transaction, and any other committed since the last fold), and the p95 of the last 50
-- successful polls (what the timeout is learned from).
with pending as (
  select p.server_id, sum(p.attempts) as attempts, sum(p.successes) as successes,
         sum(p.response_sum_ms) as response_sum_ms, sum(p.response_count) as response_count
  from public.connection_metrics_rollup_pending p
  where p.server_id = any(%(ids)s::uuid[]) and p.hour > now() - interval '24 hours'
  group by p.server_id
)
select s.id,
       round(100.0 * (coalesce(h.successes, 0) + coalesce(p.successes, 0))
             / nullif(coalesce(h.attempts, 0) + coalesce(p.attempts, 0), 0), 1) as success_rate,
       ((coalesce(h.response_sum_ms, 0) + coalesce(p.response_sum_ms, 0))
             / nullif(coalesce(h.response_count, 0) + coalesce(p.response_count, 0), 0))::integer
         as avg_response_time_ms,
       (select percentile_cont(0.95) within group (order by m.response_time_ms)
          from (select response_time_ms from public.connection_metrics
                 where server_id = s.id and success order by scheduled_at desc limit 50) m) as p95_ms,
       (select count(*) from (select 1 from public.connection_metrics
                 where server_id = s.id and success order by scheduled_at desc limit 50) c) as samples
from public.proxmox_servers s
cross join lateral (
  select sum(r.attempts) as attempts, sum(r.successes) as successes, sum(r.response_sum_ms) as response_sum_ms,
         sum(r.response_count) as response_count
  from public.connection_metrics_hourly r
  where r.server_id = s.id and r.hour > now() - interval '24 hours'
) h
left join pending p on p.server_id = s.id
where s.id = any(%(ids)s::uuid[]);

-- name: defer_rollup
-- The worker's write transaction: its insert's rollup deltas go to connection_metrics_rollup_pending
-- (plain rows, one per server and hour) instead of being upserted; fold_rollup adds them up later.
select set_config('proxwatch.rollup_deferred', 'on', true);

-- name: fold_rollup
-- The pending rollup deltas into connection_metrics_hourly/daily (migration rollup_pending).
select pending, polls, lag_s from public.fold_connection_metrics_rollup();

-- name: update_status
update public.proxmox_servers set
  connection_status = %(connection_status)s::public.connection_status,
  last_health_check_at = %(last_health_check_at)s,
  last_connected_at = %(last_connected_at)s,
  health_check_error = %(health_check_error)s,
  health_check_error_kind = %(health_check_error_kind)s,
  pve_version = %(pve_version)s,
  nodes_online = %(nodes_online)s,
  nodes_total = %(nodes_total)s,
  used_fallback = %(used_fallback)s,
  avg_response_time_ms = %(avg_response_time_ms)s,
  success_rate = %(success_rate)s,
  learned_timeout_ms = %(learned_timeout_ms)s
where id = %(id)s;

-- name: record_incidents
-- The incident side of the status changes of one batch, in the same transaction (one statement):
-- a server now offline or degraded opens its incident, or — when one is open — raises its kind to the
-- worst seen (offline beats degraded) and notes the latest error; the first error stays. A server
-- now online closes its open incident at the recovering poll. `at` is the scheduled_at of the poll
-- that made the change. The unique index on open incidents is the arbiter: a retried or concurrent
-- write updates the open incident instead of opening a second one.
with r as (
  select * from unnest(%(server_id)s::uuid[], %(status)s::text[], %(at)s::timestamptz[], %(error_kind)s::text[],
                       %(error_message)s::text[]) as r(server_id, status, at, error_kind, error_message)
), closed as (
  update public.incidents i set ended_at = r.at, updated_at = now()
  from r
  where r.status = 'online' and i.server_id = r.server_id and i.ended_at is null and i.started_at <= r.at
  returning i.id
), opened as (
  insert into public.incidents as i (tenant_id, server_id, status, started_at, error_kind, error_message,
                                     last_error_message)
  select s.tenant_id, r.server_id, r.status::public.connection_status, r.at, r.error_kind, r.error_message,
         r.error_message
  from r join public.proxmox_servers s on s.id = r.server_id
  where r.status in ('offline', 'degraded')
  order by r.server_id
  on conflict (server_id) where ended_at is null do update set
    status = case when excluded.status = 'offline' then 'offline'::public.connection_status else i.status end,
    error_kind = coalesce(i.error_kind, excluded.error_kind),
    last_error_message = coalesce(excluded.last_error_message, i.last_error_message),
    updated_at = now()
  where excluded.status is distinct from i.status and excluded.status = 'offline'
     or excluded.last_error_message is distinct from i.last_error_message and excluded.last_error_message is not null
  returning i.id, (xmax = 0) as new
)
select (select count(*) from closed) as closed, (select count(*) from opened where new) as opened,
       (select count(*) from opened where not new) as updated;

-- name: incidents_list
-- Incidents for the CLI, newest first (the API function, as the owner: every tenant's).
select * from public.incidents(%(server_id)s, %(open_only)s, %(limit)s);

-- name: schema_present
select to_regclass('public.proxmox_servers') is not null as present;

-- name: local_admin_memberships
-- The local admin of embedded mode administers every tenant.
insert into public.tenant_members (tenant_id, user_id, role)
select t.id, %(user_id)s, 'admin' from public.tenants t
on conflict (tenant_id, user_id) do update set role = 'admin';

-- name: insert_local_admin
-- Embedded mode's local admin, unless it exists (two processes may bootstrap one home at once).
insert into auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                        raw_app_meta_data, raw_user_meta_data, created_at, updated_at)
values ('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
        lower(%(email)s), %(password_hash)s, now(), '{"provider": "email", "providers": ["email"]}', '{}',
        now(), now())
on conflict do nothing;

-- name: insert_audit
-- One audit entry (see worker/audit.py).
insert into public.audit_log (tenant_id, user_id, actor, action, server_id, target_type, target_id, details)
values (%(tenant_id)s, %(user_id)s, %(actor)s, %(action)s, %(server_id)s, %(target_type)s, %(target_id)s,
        %(details)s)
returning id, created_at;

-- name: fleet_metrics
-- The fleet exporter's one query per scrape: every server's gauges. The 24 h figures are those the
-- worker keeps on the server row (from the hourly rollup); the newest poll is one index probe per
-- server on (server_id, scheduled_at); sessions and operations use their partial indexes.
select t.name as tenant, s.name, s.connection_status::text as status, s.success_rate,
       s.learned_timeout_ms, s.nodes_online,
       (select m.response_time_ms from public.connection_metrics m
         where m.server_id = s.id order by m.scheduled_at desc limit 1) as response_time_ms,
       (select count(*) from public.guests g
         where g.server_id = s.id and g.status = 'running' and not g.template) as guests_running,
       (select count(*) from public.connection_sessions c
         where c.server_id = s.id and c.status = 'open') as sessions_open,
       (select count(*) from public.active_operations o
         where o.server_id = s.id and o.status = 'in_progress') as operations_running
from public.proxmox_servers s
join public.tenants t on t.id = s.tenant_id
order by t.name, s.name;
