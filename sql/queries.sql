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

-- name: defer_rollup
-- The worker's write transaction: its insert's rollup deltas go to connection_metrics_rollup_pending
-- (plain rows, one per server and hour) instead of being upserted; fold_rollup adds them up later
-- and decides the status of their servers (migration status_fold).
select set_config('proxwatch.rollup_deferred', 'on', true);

-- name: insert_metrics
-- One metric row per poll result; a retried poll (same server_id, scheduled_at) is ignored, and the
-- rollup trigger counts only the rows really inserted. The arrays travel in binary format: a third
-- of the client's CPU per row went into quoting them as text.
insert into public.connection_metrics (server_id, tenant_id, scheduled_at, created_at, success, response_time_ms,
                                       error_kind, error_message, used_fallback, pve_version, nodes_online,
                                       nodes_total, quorate)
select r.server_id, s.tenant_id, r.scheduled_at, r.created_at, r.success, r.response_time_ms, r.error_kind,
       r.error_message, r.used_fallback, r.pve_version, r.nodes_online, r.nodes_total, r.quorate
from unnest(%(server_id)b::uuid[], %(scheduled_at)b::timestamptz[], %(created_at)b::timestamptz[],
            %(success)b::boolean[], %(response_time_ms)b::integer[], %(error_kind)b::text[],
            %(error_message)b::text[], %(used_fallback)b::boolean[], %(pve_version)b::text[],
            %(nodes_online)b::integer[], %(nodes_total)b::integer[], %(quorate)b::boolean[])
     as r(server_id, scheduled_at, created_at, success, response_time_ms, error_kind, error_message, used_fallback,
          pve_version, nodes_online, nodes_total, quorate)
join public.proxmox_servers s on s.id = r.server_id
order by r.server_id, r.scheduled_at
on conflict (server_id, scheduled_at) do nothing;

-- name: record_incidents
-- The incidents of status changes, as the fold records them (migration status_fold): arrays of server
-- ids, new statuses, the times of the polls that made them so, error kinds and messages.
select closed, opened, updated
from public.record_server_incidents(%(server_id)s::uuid[], %(status)s::text[], %(at)s::timestamptz[],
                                    %(error_kind)s::text[], %(error_message)s::text[]);

-- name: fold_rollup
-- The pending rollup deltas into connection_metrics_hourly/daily, then the status of their servers
-- (migrations rollup_pending, status_fold), with the status rules' settings.
select pending, polls, lag_s, servers, updated, incidents
from public.fold_connection_metrics_rollup(%(offline_after)s, %(refresh_s)s, %(timeout_min_ms)s, %(timeout_max_ms)s);

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
