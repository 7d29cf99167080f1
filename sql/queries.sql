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
       s.pve_version, s.nodes_online, s.nodes_total, s.health_check_error
from public.proxmox_servers s join public.tenants t on t.id = s.tenant_id
where (%(tenant)s::text is null or t.name = %(tenant)s)
order by t.name, s.name;

-- name: servers_by_name
select s.id, s.name, t.name as tenant from public.proxmox_servers s join public.tenants t on t.id = s.tenant_id
where s.name = %(name)s and (%(tenant)s::text is null or t.name = %(tenant)s);

-- name: delete_server
delete from public.proxmox_servers where id = %(id)s;

-- name: schedule_list
-- Every enabled server and its interval, for the scheduler.
select id, poll_interval_s from public.proxmox_servers where enabled order by id;

-- name: poll_target
-- Everything one poll needs: the address, TLS settings, credentials and the learned timeout.
select s.id, s.tenant_id, s.name, s.base_url, s.fallback_url, s.tls_mode, s.tls_fingerprint,
       s.learned_timeout_ms, c.username, c.token_id, c.secret_ciphertext, s.updated_at
from public.proxmox_servers s join public.server_credentials c on c.server_id = s.id
where s.id = %(server_id)s;
