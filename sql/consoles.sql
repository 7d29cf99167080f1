-- Named queries of guests, consoles and the session registry (worker/inventory.py, consoles.py,
-- sessions.py, gateway/, cli_consoles.py). The logic that must be atomic lives in the SQL functions
-- of supabase/migrations/20261122000300_consoles_sessions.sql; these call them.

-- name: guest_sync_lock
-- Two syncs of one server (a retried message overlapping the next) take turns.
select pg_advisory_xact_lock(hashtextextended('proxwatch.guests:' || %(server_id)s::text, 0));

-- name: guests_of_server
select vmid, guest_type, node, name, status, template, tags, cpu_pct, maxcpu, mem_pct, maxmem, maxdisk,
       started_at, hastate, lock, pool
from public.guests where server_id = %(server_id)s;

-- name: upsert_guests
-- Only rows the sync found changed are sent here, so every write is a change a person sees.
insert into public.guests as g (server_id, tenant_id, vmid, guest_type, node, name, status, template, tags,
                                cpu_pct, maxcpu, mem_pct, maxmem, maxdisk, started_at, hastate, lock, pool)
select %(server_id)s, s.tenant_id, r.vmid, r.guest_type, r.node, r.name, r.status, r.template,
       coalesce(string_to_array(nullif(r.tags, ''), ';'), '{}'), r.cpu_pct, r.maxcpu, r.mem_pct, r.maxmem,
       r.maxdisk, r.started_at, r.hastate, r.lock, r.pool
from unnest(%(vmid)s::integer[], %(guest_type)s::text[], %(node)s::text[], %(name)s::text[], %(status)s::text[],
            %(template)s::boolean[], %(tags)s::text[], %(cpu_pct)s::smallint[], %(maxcpu)s::integer[],
            %(mem_pct)s::smallint[], %(maxmem)s::bigint[], %(maxdisk)s::bigint[], %(started_at)s::timestamptz[],
            %(hastate)s::text[], %(lock)s::text[], %(pool)s::text[])
     as r(vmid, guest_type, node, name, status, template, tags, cpu_pct, maxcpu, mem_pct, maxmem, maxdisk,
          started_at, hastate, lock, pool)
join public.proxmox_servers s on s.id = %(server_id)s
order by r.vmid
on conflict (server_id, vmid) do update set
  guest_type = excluded.guest_type, node = excluded.node, name = excluded.name, status = excluded.status,
  template = excluded.template, tags = excluded.tags, cpu_pct = excluded.cpu_pct, maxcpu = excluded.maxcpu,
  mem_pct = excluded.mem_pct, maxmem = excluded.maxmem, maxdisk = excluded.maxdisk,
  started_at = excluded.started_at, hastate = excluded.hastate, lock = excluded.lock, pool = excluded.pool,
  updated_at = now();

-- name: delete_vanished_guests
-- Guests PVE no longer lists disappear.
delete from public.guests where server_id = %(server_id)s and not (vmid = any(%(vmids)s::integer[]))
returning vmid;

-- name: record_guest_sync
-- The outcome of one sync (error_kind null: it worked; skipped: malformed entries of PVE's answer
-- left out, null when PVE could not be asked). Not published.
insert into public.guest_syncs as y (server_id, tenant_id, last_attempt_at, last_success_at, guest_count,
                                     error_kind, error_message, skipped, skipped_detail)
select s.id, s.tenant_id, now(), case when %(error_kind)s::text is null then now() end, %(guest_count)s,
       %(error_kind)s, %(error_message)s, coalesce(%(skipped)s::integer, 0), %(skipped_detail)s
from public.proxmox_servers s where s.id = %(server_id)s
on conflict (server_id) do update set
  last_attempt_at = excluded.last_attempt_at,
  last_success_at = coalesce(excluded.last_success_at, y.last_success_at),
  guest_count = coalesce(excluded.guest_count, y.guest_count),
  error_kind = excluded.error_kind, error_message = excluded.error_message,
  skipped = case when %(skipped)s::integer is null then y.skipped else excluded.skipped end,
  skipped_detail = case when %(skipped)s::integer is null then y.skipped_detail else excluded.skipped_detail end;

-- name: guests_list
-- The CLI's guest list (service role: every tenant, or one).
select t.name as tenant, s.name as server, g.vmid, g.guest_type, g.node, g.name, g.status, g.tags, g.cpu_pct,
       g.mem_pct, g.maxmem, g.started_at, y.last_success_at, y.error_message, y.skipped, y.skipped_detail
from public.guests g
join public.proxmox_servers s on s.id = g.server_id
join public.tenants t on t.id = g.tenant_id
left join public.guest_syncs y on y.server_id = g.server_id
where (%(server_id)s::uuid is null or g.server_id = %(server_id)s)
  and (%(tenant)s::text is null or t.name = %(tenant)s)
order by t.name, s.name, g.vmid;

-- name: console_token
-- What a console link opens; p_consume takes it (once). Raises PT410 with the reason otherwise.
select public.console_token(%(token)s, %(consume)s) as info;

-- name: session_capacity
select public.session_capacity(%(server_id)s) as refusal;

-- name: open_session
select * from public.open_session(%(user_id)s, %(server_id)s, %(protocol)s, %(target)s, %(guest_type)s, %(vmid)s,
                                  %(node)s, %(client_ip)s::inet, %(gateway)s, %(user_email)s);

-- name: close_session
select public.close_session(%(id)s, %(reason)s) as closed;

-- name: heartbeat_sessions
-- One heartbeat for every session a gateway holds; returns those no longer open.
select id from public.heartbeat_sessions(%(ids)s::uuid[]) as id;

-- name: sessions_not_open
-- The gateway's kill watch (every second): which of its sessions were killed or expired.
select id, status, close_reason from public.connection_sessions
where id = any(%(ids)s::uuid[]) and status <> 'open';

-- name: session_failure
-- Count a failed attempt (server_id may be null when the link itself was bad).
select public.session_count_attempt(%(server_id)s, false);

-- name: kill_session
select public.kill_session(%(id)s) as result;

-- name: cleanup_stale_connections
select public.cleanup_stale_connections(%(max_age)s::interval) as cleaned;

-- name: purge_closed_sessions
select public.purge_closed_sessions() as purged;

-- name: active_connections
select * from public.active_connections(%(team)s, %(protocol)s, %(user_id)s, %(limit)s, %(offset)s);

-- name: recent_sessions
-- The CLI's `sessions list --all`: open and closed sessions, newest first.
select s.id, s.status, s.protocol, s.target, v.name as server_name, t.name as team_name, s.user_email,
       host(s.client_ip) as client_ip, s.started_at, greatest(s.last_seen_at, h.last_seen_at) as last_seen_at,
       s.closed_at, s.close_reason
from public.connection_sessions s
join public.proxmox_servers v on v.id = s.server_id
join public.tenants t on t.id = s.tenant_id
left join public.connection_heartbeats h on h.session_id = s.id
order by s.started_at desc, s.id
limit %(limit)s;

-- name: session_by_id_prefix
-- `sessions kill ID` accepts the full id or its first characters, as the list shows them.
select id from public.connection_sessions where id::text like %(prefix)s || '%%' order by started_at desc limit 2;

-- name: session_stats
select public.session_stats() as stats;

-- name: session_settings
select max_total, max_per_host, stale_after, retention from public.connection_session_settings where id;

-- name: update_session_settings
update public.connection_session_settings set
  max_total = coalesce(%(max_total)s, max_total),
  max_per_host = coalesce(%(max_per_host)s, max_per_host),
  stale_after = coalesce(%(stale_after)s::interval, stale_after),
  retention = coalesce(%(retention)s::interval, retention),
  updated_at = now()
where id
returning max_total, max_per_host, stale_after, retention;

-- name: set_host_limit
insert into public.connection_host_limits (server_id, max_sessions) values (%(server_id)s, %(max_sessions)s)
on conflict (server_id) do update set max_sessions = excluded.max_sessions;

-- name: clear_host_limit
delete from public.connection_host_limits where server_id = %(server_id)s;

-- name: host_limits
select s.name as server_name, l.max_sessions from public.connection_host_limits l
join public.proxmox_servers s on s.id = l.server_id order by s.name;

-- name: ssh_target
-- SSH access to one node (its own row, else the server's default row with node ''); the table is
-- shared with operations (ssh_test) and set with `proxwatch ops ssh-set`.
select host, port, username, host_key, auth_kind, secret_ciphertext
from public.server_ssh_credentials
where server_id = %(server_id)s and node in (%(node)s, '')
order by node desc limit 1;
